"""pass@k and maj@k against brute-force enumeration over all subsets."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from fractions import Fraction

import pytest

from echochamber.metrics_passk import default_ks, maj_at_k, maj_at_ks, pass_at_k


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


def test_maj_at_k_is_fast_enough_for_64_samples():
    import time

    rng = random.Random(2)
    answers = [rng.choice(["7", "8", None] + [str(i) for i in range(40)]) for _ in range(64)]
    correct = [a == "7" for a in answers]
    start = time.perf_counter()
    result = maj_at_ks(answers, correct, default_ks(64))
    assert time.perf_counter() - start < 0.5
    assert all(0.0 <= v <= 1.0 for v in result.values())


def test_default_ks():
    assert default_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_ks(1) == [1]
    assert default_ks(6) == [1, 2, 4, 6]
