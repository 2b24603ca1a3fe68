"""pass@k and maj@k against brute-force enumeration over all subsets."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter
from fractions import Fraction

import pytest

from echochamber.eval.passk import crossover, default_ks, maj_at_k, maj_at_ks, pass_at_k, vote_classes
from echochamber.verify.normalize import vote_key


def _brute_pass(correct: list[bool], k: int) -> Fraction:
    subsets = list(itertools.combinations(range(len(correct)), k))
    return Fraction(sum(any(correct[i] for i in s) for s in subsets), len(subsets))


def _brute_maj(answers: list[str | None], correct: list[bool], k: int) -> Fraction:
    """Vote in every size-k subset; ties split uniformly; answers vote as (answer, correct)."""
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for subset in subsets:
        votes = Counter((answers[i], correct[i]) for i in subset if answers[i] is not None)
        if not votes:
            continue
        top = max(votes.values())
        winners = [key for key, count in votes.items() if count == top]
        total += Fraction(sum(ok for _, ok in winners), len(winners))
    return total / len(subsets)


def test_pass_at_k_matches_enumeration_over_subsets():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 10)
        correct = [rng.random() < rng.random() for _ in range(n)]
        for k in range(1, n + 1):
            expected = _brute_pass(correct, k)
            assert pass_at_k(n, sum(correct), k) == pytest.approx(float(expected), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(1024, 512) overflows nothing here because no binomial is formed.
    assert pass_at_k(1024, 1, 512) == pytest.approx(0.5)
    assert pass_at_k(1024, 0, 512) == 0.0
    assert pass_at_k(64, 64, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_maj_at_k_matches_enumeration_over_subsets():
    rng = random.Random(1)
    for case in range(80):
        n = rng.randint(1, 9)
        alphabet = ["1", "2", "3", "4", None][: rng.randint(2, 5)]
        answers = [rng.choice(alphabet) for _ in range(n)]
        # Gold is "1"; every few cases a second spelling of a correct answer ("1.0") competes with
        # it, and sometimes the grader disagrees with itself on one string (the vote must split).
        correct = [a in ("1", "1.0") for a in answers]
        if case % 3 == 0:
            answers = [("1.0" if a == "2" else a) for a in answers]
            correct = [a in ("1", "1.0") for a in answers]
        if case % 5 == 0 and n > 1:
            flip = rng.randrange(n)
            correct[flip] = not correct[flip]
        ks = list(range(1, n + 1))
        fast = maj_at_ks(answers, correct, ks)
        for k in ks:
            expected = _brute_maj(answers, correct, k)
            assert fast[k] == pytest.approx(float(expected), abs=1e-12), (answers, correct, k)


def test_maj_at_k_simple_cases():
    # Plain vote at k = n: "2" wins 3 to 2.
    assert maj_at_k(["1", "1", "2", "2", "2"], [True, True, False, False, False], 5) == 0.0
    # A 1-1 tie at k = n is a coin flip.
    assert maj_at_k(["1", "2"], [True, False], 2) == pytest.approx(0.5)
    # maj@1 is the share of correct samples; abstainers (None) never win.
    assert maj_at_k(["1", None, None, "3"], [True, False, False, False], 1) == pytest.approx(0.25)
    assert maj_at_k([None, None], [False, False], 2) == 0.0


def test_maj_at_k_over_64_samples_is_exact_at_both_ends():
    # The estimator is exact, not enumerated: C(64, 32) subsets would never finish (pytest's timeout).
    rng = random.Random(2)
    answers = [rng.choice(["7", "8", None] + [str(i) for i in range(40)]) for _ in range(64)]
    correct = [a == "7" for a in answers]
    result = maj_at_ks(answers, correct, default_ks(64))
    # Exact at both ends: maj@1 is the share of correct votes, maj@64 the plain vote of all samples.
    assert result[1] == pytest.approx(sum(correct) / 64, abs=1e-12)
    votes = Counter(a for a in answers if a is not None)
    winners = [a for a, count in votes.items() if count == max(votes.values())]
    assert result[64] == pytest.approx(sum(a == "7" for a in winners) / len(winners), abs=1e-12)


def _hypergeometric_maj(correct: int, wrong: int, abstain: int, k: int) -> Fraction:
    """maj@k with one correct answer (`correct` votes), one wrong one and abstainers, by summing the
    multivariate hypergeometric law of the votes a size-k subset draws: independent of maj_at_ks."""
    total = Fraction(0)
    for c in range(min(correct, k) + 1):
        for w in range(min(wrong, k - c) + 1):
            if k - c - w > abstain:
                continue
            ways = math.comb(correct, c) * math.comb(wrong, w) * math.comb(abstain, k - c - w)
            total += ways * (Fraction(1) if c > w else Fraction(1, 2) if c == w > 0 else Fraction(0))
    return total / math.comb(correct + wrong + abstain, k)


@pytest.mark.parametrize(("correct", "wrong", "abstain"), [(20, 24, 20), (30, 30, 4), (5, 50, 9), (32, 32, 0)])
def test_maj_at_k_equals_the_hypergeometric_sum_at_64_samples(correct, wrong, abstain):
    answers = ["7"] * correct + ["8"] * wrong + [None] * abstain
    flags = [a == "7" for a in answers]
    result = maj_at_ks(answers, flags, default_ks(64))
    for k in default_ks(64):
        assert result[k] == pytest.approx(float(_hypergeometric_maj(correct, wrong, abstain, k)), abs=1e-12), k


def _numerically_same(pairs):
    """A stand-in for math-verify: spellings of one rational number are one answer."""
    return [_value(a) == _value(b) for a, b in pairs]


def _value(text: str) -> Fraction | str:
    text = text.replace("\\frac{", "").replace("}{", "/").replace("}", "")
    try:
        return Fraction(text)
    except ValueError:
        return text


class _CountingSame:
    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    def __call__(self, pairs):
        self.calls.append(list(pairs))
        return _numerically_same(pairs)


def test_vote_classes_merge_spellings_and_keep_the_most_common_as_representative():
    keys = [vote_key(a) for a in ["1/2", "0.5", "\\frac{1}{2}", "0.5", "3", None, "3.0", "\\frac{6}{2}", "2"]]
    same = _CountingSame()
    [votes] = vote_classes([keys], same)
    # "0.5" (twice) and "3" (twice: "3.0" is spelled "3") are the most common spellings of their class.
    assert votes == ["0.5", "0.5", "0.5", "0.5", "3", None, "3", "3", "2"]
    asked = [pair for call in same.calls for pair in call]
    # Keys are compared with class representatives only, and two plain numbers further apart than
    # math-verify's tolerance are never sent ("2" against "0.5" or "3").
    assert {first for first, _ in asked} <= {"0.5", "3", "2"}
    plain = re.compile(r"-?\d+(?:\.\d+)?")
    assert not any(plain.fullmatch(a) and plain.fullmatch(b) for a, b in asked)
    assert len(same.calls) <= 6  # one call per round after the first: at most one per distinct key


def test_vote_classes_batch_all_prompts_of_a_call_into_each_round():
    groups = [["1/2", "0.5"], ["3", "\\frac{6}{2}", "3"], ["4"], [None, None], []]
    same = _CountingSame()
    # Ties in frequency go by spelling: "0.5" sorts before "1/2".
    assert vote_classes(groups, same) == [["0.5", "0.5"], ["3", "3", "3"], ["4"], [None, None], []]
    # Round 1 opens each prompt's first class; round 2 asks both prompts' second keys in one call.
    assert same.calls == [[("0.5", "1/2"), ("3", "\\frac{6}{2}")]]


def test_vote_classes_cost_is_bounded_by_pairs_of_distinct_answers():
    # 12 distinct non-numeric answers, none equal: every pair once, and no more.
    keys = [f"x_{i}" for i in range(12)] * 2
    same = _CountingSame()
    votes = vote_classes([keys], same)[0]
    assert votes == keys
    assert sum(len(call) for call in same.calls) == 12 * 11 // 2


def test_maj_at_k_over_vote_classes_matches_brute_force_over_planted_classes():
    """Random spellings of planted values; the vote of each sample must act as its planted value."""
    spellings = {
        "half": ["0.5", "1/2", "\\frac{1}{2}", "0.50"],
        "three": ["3", "3.0", "\\frac{6}{2}"],
        "two": ["2", "2.0"],
    }
    rng = random.Random(3)
    for _ in range(40):
        n = rng.randint(1, 8)
        planted = [rng.choice([*spellings, None]) for _ in range(n)]
        answers = [None if p is None else rng.choice(spellings[p]) for p in planted]
        correct = [p == "half" for p in planted]
        [votes] = vote_classes([[vote_key(a) for a in answers]], _numerically_same)
        result = maj_at_ks(votes, correct, range(1, n + 1))
        for k in range(1, n + 1):
            assert result[k] == pytest.approx(float(_brute_maj(planted, correct, k)), abs=1e-12)


def test_default_ks():
    assert default_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_ks(1) == [1]
    assert default_ks(6) == [1, 2, 4, 6]


@pytest.mark.parametrize(
    ("rl", "base", "expected"),
    [
        ([0.5, 0.6, 0.7], [0.2, 0.4, 0.6], None),  # RL ahead at the largest k: no crossover
        ([0.5, 0.6, 0.7], [0.2, 0.6, 0.9], 2),  # level at k = 2, ahead after
        ([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], 1),  # the base curve is never below
        ([0.5, 0.6, 0.7, 0.8], [0.2, 0.7, 0.5, 0.9], 4),  # crosses, falls back, crosses for good at 4
        ([0.4, 1.0], [0.2, 1.0 - 1e-12], 2),  # both reach 1: level within the tolerance
    ],
)
def test_crossover_is_where_the_base_curve_stays_at_or_above_to_the_end(rl, base, expected):
    assert crossover(rl, base) == expected


def test_crossover_refuses_curves_of_different_lengths():
    with pytest.raises(ValueError, match="one non-zero length"):
        crossover([0.5, 0.6], [0.5])
