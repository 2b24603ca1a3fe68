"""Reading results dicts (results.json, and RL's "eval" and "rl" metrics lines, which carry the same
keys): metrics as numbers, the headline pass@1, and the format names and shares a run folder records
(a run's registry names its formats; `other`, degenerate or unrecognised text, is never a winner)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from echochamber.formats.registry import OTHER


def number(value: Any) -> float | None:
    """A metric as a float; None for missing values. Metrics files spell NaN/inf as strings."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def headline(results: dict[str, Any] | None) -> float | None:
    """pass@1: greedy when evaluated, else the sampled estimate."""
    if not results:
        return None
    for mode in ("greedy", "sampled"):
        value = number((results.get(mode) or {}).get("pass@1"))
        if value is not None:
            return value
    return None


def format_summary(results: dict[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """Per-format count/share/accuracy: of the sampled generations (more of them), else the greedy."""
    if not results:
        return None
    for mode in ("sampled", "greedy"):
        formats = (results.get(mode) or {}).get("formats")
        if formats:
            return formats
    return None


def format_shares(shares: dict[str, Any] | None) -> dict[str, float]:
    """{format: share} from a `format_summary` or an RL line's `format_share` (None counts as 0)."""
    return {
        name: number(value.get("share") if isinstance(value, dict) else value) or 0.0
        for name, value in (shares or {}).items()
    }


def dominant(shares: dict[str, Any] | None) -> tuple[str, float] | None:
    """The most frequent real format and its share, from {format: share} or a `format_summary`.

    `other` (degenerate or unclassifiable text) is never a winning format: a run where it is the
    most frequent label is `degenerate`, whatever real format comes next."""
    flat = format_shares(shares)
    real = real_formats(flat)
    if not real:
        return None
    name = max(real, key=flat.__getitem__)
    return name, flat[name]


def degenerate(shares: dict[str, Any] | None) -> float | None:
    """The share of `other` when it is the most frequent label (the run writes mostly degenerate
    text, not one of the pretraining formats), else None."""
    flat = format_shares(shares)
    other = flat.get(OTHER, 0.0)
    return (
        other
        if flat and other > 0 and other >= max((flat[fmt] for fmt in real_formats(flat)), default=0.0)
        else None
    )


def eval_benchmark(line: dict[str, Any]) -> str:
    """The benchmark of an RL "eval" line (the eval suite writes `benchmark`; `split` is the short form)."""
    if "benchmark" in line:
        return str(line["benchmark"])
    split = str(line.get("split", "test"))
    return split if "-" in split else f"world-{split}"


def merge_names(groups: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The labels of several registries in first-seen order, `other` last (always present)."""
    names = dict.fromkeys(name for group in groups for name in group if name != OTHER)
    return (*names, OTHER)


def real_formats(names: Collection[str]) -> list[str]:
    """The declared formats among `names`: every label but `other`, in their order."""
    return [name for name in names if name != OTHER]
