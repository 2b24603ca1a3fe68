"""Unbiased pass@k and maj@k from n >= k samples per prompt, and what a sample votes for.

Both are the mean, over all C(n, k) size-k subsets of the n samples, of "some sample is correct"
(pass@k) or "the majority vote is correct" (maj@k), computed in closed form rather than by drawing
subsets, so they carry no Monte-Carlo noise and are exact for k = n. A sample votes for its answer's
class: answers math-verify holds equal ("0.5", "1/2", "\\frac{1}{2}") are one vote (`vote_classes`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from echochamber.verify.normalize import PLAIN_NUMBER

# Python floats hold C(n, k) up to n ≈ 1029; the exact maj@k below sums such weights.
MAX_SAMPLES = 1024


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al. 2021), which never forms the huge
    binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every size-k subset contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def maj_at_ks(answers: Sequence[str | None], correct: Sequence[bool], ks: Sequence[int]) -> dict[int, float]:
    """Exact expected majority-vote accuracy of a uniformly random size-k subset of the n samples.

    Definition (for every k <= n; k = n is the plain vote over all samples): draw k of the n samples
    without replacement, uniformly; each sample with an answer votes for it, a sample with no answer
    (None) abstains; the answer with the most votes wins, ties broken uniformly at random; a subset
    with no votes scores 0. maj@k is the probability that the winner is correct — the mean of the
    subset vote over all C(n, k) subsets, so it is the unbiased estimate of maj@k from n >= k samples
    just as `pass_at_k` is for pass@k.

    Votes are cast for (answer, correct) pairs: for a deterministic grader that is the same as voting
    for answers, and if the grader ever disagrees with itself on one answer string the vote splits
    instead of inheriting an arbitrary label.

    Computed exactly (up to float rounding) by counting, for each correct answer g and each vote
    count t, the subsets where g gets t votes and every other answer at most t, with a polynomial
    recursion over the other answers that also tracks how many tie with g.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"maj_at_ks: {n} answers but {len(correct)} correctness flags")
    if n > MAX_SAMPLES:
        raise ValueError(f"maj_at_ks supports at most {MAX_SAMPLES} samples, got {n}")
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"maj_at_ks needs 1 <= k <= n, got k={k} n={n}")
    groups = Counter((a, bool(ok)) for a, ok in zip(answers, correct, strict=True) if a is not None)
    abstain = n - sum(groups.values())
    sizes = list(groups.values())
    is_correct = [ok for _, ok in groups]
    wins = np.zeros(n + 1)  # wins[k] = number of size-k subsets won by a correct answer (tie-weighted)
    abstain_poly = np.array([math.comb(abstain, x) for x in range(abstain + 1)], dtype=float)
    for g, size_g in enumerate(sizes):
        if not is_correct[g]:
            continue
        others = sizes[:g] + sizes[g + 1 :]
        for t in range(1, size_g + 1):
            ties = _subsets_with_at_most(others, t, abstain_poly, n)
            # 1/(j+1): g shares the win with the j other answers that also got t votes.
            share = ties @ (1.0 / np.arange(1, ties.shape[1] + 1))
            wins[t:] += math.comb(size_g, t) * share[: n + 1 - t]
    return {k: float(wins[k] / math.comb(n, k)) for k in ks}


def _subsets_with_at_most(sizes: list[int], t: int, abstain_poly: np.ndarray, n: int) -> np.ndarray:
    """poly[used, j]: ways to pick `used` samples from the abstainers and the answer groups of
    `sizes` so that no group gets more than t, with exactly j groups getting exactly t."""
    max_ties = sum(1 for s in sizes if s >= t)
    poly = np.zeros((n + 1, max_ties + 1))
    poly[: len(abstain_poly), 0] = abstain_poly
    for size in sizes:
        new = np.zeros_like(poly)
        for x in range(min(size, t) + 1):
            weight = math.comb(size, x)
            if x == t:
                new[x:, 1:] += weight * poly[: n + 1 - x, :-1]
            else:
                new[x:, :] += weight * poly[: n + 1 - x, :]
        poly = new
    return poly


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k for one prompt; see `maj_at_ks` for the definition."""
    return maj_at_ks(answers, correct, [k])[k]


def crossover(rl: Sequence[float], base: Sequence[float], tolerance: float = 1e-9) -> int | None:
    """Where the base model's pass@k curve catches the RL policy's, for curves given at k = 1..K.

    The smallest k such that base(j) >= rl(j) for every j from k to K (within `tolerance`, so two
    curves that both reach 1.0 count as level): from there on, drawing k samples from the base
    model solves at least as many prompts as drawing them from the RL policy (the crossover of Yue
    et al. 2025, arXiv 2504.13837). 1 means the base curve is never below the RL one; None means the
    RL policy is still ahead at k = K, so no crossover happens within the samples drawn. A curve that
    dips below and recovers gives the last crossing, the one whose base lead lasts to K.
    """
    if len(rl) != len(base) or not rl:
        raise ValueError(f"crossover needs two curves of one non-zero length, got {len(rl)} and {len(base)}")
    k = len(rl)
    while k >= 1 and base[k - 1] >= rl[k - 1] - tolerance:
        k -= 1
    return None if k == len(rl) else k + 1


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself, so pass@n / maj@n are always reported)."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else [*ks, n]


# math-verify calls two plain numbers equal only if they are exactly equal or both round to the same
# 6 decimals (see verify/answers.py), so numbers further apart than this are surely different;
# the margin (10x, plus a relative term for numbers too large for float's digits) costs nothing.
_SURELY_DIFFERENT = Decimal("1e-5")
_SURELY_DIFFERENT_RELATIVE = Decimal("1e-12")


SameAnswers = Callable[[Sequence[tuple[str, str]]], list[bool]]


def vote_classes(groups: Sequence[Sequence[str | None]], same: SameAnswers) -> list[list[str | None]]:
    """The vote of every sample: the representative of its answer's equivalence class, per prompt.

    `groups` holds each prompt's vote keys (`vote_key` of the answer, None for a sample that
    abstains); `same(pairs)` says for each pair of keys whether they are one answer (in the eval:
    math-verify both ways round, in worker processes: `Grader.same_answers`). Within a prompt the
    distinct keys are taken most frequent first (ties by spelling), so the representative of a class
    is its most common spelling, whatever the sample order; each key joins the first class whose
    representative it equals, else opens a class. Keys are compared with representatives only, so
    an intransitive "equal" (1/3 = 0.333333 = 333333/1000000 though 1/3 != 333333/1000000) cannot
    chain unrelated answers together.

    Cost: with d distinct keys in a prompt, at most d(d-1)/2 comparisons and d rounds (all prompts
    of a call share each round's one `same` call); pairs of plain numbers further apart than
    math-verify's tolerance are decided here without a comparison, so in practice only keys that
    are not plain numbers (LaTeX, tuples) or numbers within 1e-5 of each other are compared. Worst
    case, n = 64 distinct non-numeric answers per prompt: 2016 comparisons, each bounded by the
    math-verify pool's timeout.
    """
    orders = [_by_frequency(keys) for keys in groups]
    representatives: list[list[str]] = [[] for _ in groups]
    votes: list[dict[str, str]] = [{} for _ in groups]
    for round_index in range(max((len(order) for order in orders), default=0)):
        asked = []  # (prompt, key, candidate representatives)
        for prompt, order in enumerate(orders):
            if round_index < len(order):
                key = order[round_index]
                candidates = [rep for rep in representatives[prompt] if not _surely_different(rep, key)]
                asked.append((prompt, key, candidates))
        pairs = [(rep, key) for _, key, candidates in asked for rep in candidates]
        answers = iter(same(pairs) if pairs else [])
        for prompt, key, candidates in asked:
            matches = [rep for rep in candidates if next(answers)]
            if matches:
                votes[prompt][key] = matches[0]
            else:
                representatives[prompt].append(key)
                votes[prompt][key] = key
    return [
        [None if key is None else vote[key] for key in keys] for keys, vote in zip(groups, votes, strict=True)
    ]


def _by_frequency(keys: Sequence[str | None]) -> list[str]:
    counts = Counter(key for key in keys if key is not None)
    return sorted(counts, key=lambda key: (-counts[key], key))


def _surely_different(first: str, second: str) -> bool:
    """True when both keys are plain numbers too far apart for math-verify to call them equal."""
    if not (PLAIN_NUMBER.fullmatch(first) and PLAIN_NUMBER.fullmatch(second)):
        return False
    try:
        a, b = Decimal(first), Decimal(second)
    except InvalidOperation:
        return False
    if not (a.is_finite() and b.is_finite()):
        return False
    return abs(a - b) > _SURELY_DIFFERENT + _SURELY_DIFFERENT_RELATIVE * max(abs(a), abs(b))
