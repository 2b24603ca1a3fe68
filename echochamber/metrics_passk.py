"""Unbiased pass@k and maj@k from n >= k samples per prompt.

Both are the mean, over all C(n, k) size-k subsets of the n samples, of "some sample is correct"
(pass@k) or "the majority vote is correct" (maj@k), computed in closed form rather than by drawing
subsets, so they carry no Monte-Carlo noise and are exact for k = n.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from echochamber.verify.answers import normalize_gold

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


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself, so pass@n / maj@n are always reported)."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else [*ks, n]


_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def vote_key(answer: str | None) -> str | None:
    """The spelling an extracted answer votes under: `normalize_gold`, and numbers in one form
    ("18.0", "18", "018" -> "18"; "0.50" -> "0.5"), so the same value from a TinyGSM function (often
    a float) and from a boxed text answer count as one vote."""
    if answer is None:
        return None
    text = normalize_gold(answer)
    if _PLAIN_NUMBER.fullmatch(text):
        try:
            number = Decimal(text)
        except InvalidOperation:
            return text
        if number.is_finite():
            return format(number.normalize(), "f") if number != 0 else "0"
    return text
