"""The report's charts: one PNG per chart, drawn with matplotlib's object API on the Agg canvas.

`Figure` objects are built directly (no pyplot), so drawing needs no display, keeps no global state
between charts, and never switches the backend of a caller that uses pyplot itself. A chart whose
data are absent is skipped (None), and the page says "not run" in its place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from echochamber.eval.passk import crossover
from echochamber.report.collect import RunData
from echochamber.report.curves import curve_summary, ladder_order, run_curves
from echochamber.report.dose import DoseSeries
from echochamber.report.results import dominant, eval_benchmark, number

# The built-in formats keep one colour on every chart; a declared format takes the next free one.
FORMAT_COLORS = {
    "tinygsm": "#4C72B0", "omi1": "#DD8452", "omi2": "#55A868", "metamathqa": "#C44E52", "gsm8k": "#8172B3",
    "other": "#8C8C8C",
}  # fmt: skip
_SPARE_COLORS = ("#937860", "#DA8BC3", "#CCB974", "#64B5CD", "#1B9E77", "#E6AB02", "#666666", "#A6761D")
# Sources named after a format take its colour (a world mixture's are); others take these in turn.
SOURCE_COLORS = ("#8172B3", "#937860", "#DA8BC3", "#CCB974", "#64B5CD", "#C44E52")
SHARED_COLOR, NOVEL_COLOR = "#D0D0D0", "#F3E3C3"
DPI = 100
PANEL = (4.6, 3.2)  # inches per subplot: legible at the page's column width

RunChart = Callable[[RunData], Figure | None]


def format_colors(names: Sequence[str]) -> list[str]:
    """A colour per format label: the built-ins' own, then the spare colours in turn."""
    spare = iter(_SPARE_COLORS * (1 + len(names) // len(_SPARE_COLORS)))
    return [FORMAT_COLORS.get(name) or next(spare) for name in names]


def slug(name: str) -> str:
    """A file-name-safe form of a run name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def render_run_figures(run: RunData, out: Path, prefix: str) -> dict[str, Path]:
    """Every chart of one run that has data, saved as out/<prefix>-<chart>.png; chart key -> path."""
    paths = {}
    for key, (_, _, draw) in RUN_CHARTS.items():
        figure = draw(run)
        if figure is not None:
            paths[key] = save(figure, out / f"{prefix}-{key}.png")
    return paths


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


def _steps(
    rows: Sequence[dict[str, Any]], value: Callable[[dict[str, Any]], Any]
) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows where `value` is a number (NaN included: a diverged run shows as a gap)."""
    pairs = [(row["step"], number(value(row))) for row in rows]
    kept = [(step, v) for step, v in pairs if v is not None]
    return [s for s, _ in kept], [v for _, v in kept]


def _panels(count: int, *, sharex: bool = True, title_room: float = 0.0) -> tuple[Figure, list[Axes]]:
    width, height = PANEL[0] * count, PANEL[1] + title_room
    figure = Figure(figsize=(width, height))
    # Fixed margins in inches: constrained or tight layout would measure every label in an extra
    # pass, which doubles the drawing time of a sweep's dozens of charts.
    figure.subplots_adjust(
        left=0.6 / width,
        right=1 - 0.6 / width,
        bottom=0.55 / height,
        top=1 - (0.35 + title_room) / height,
        wspace=0.35,
    )
    axes = figure.subplots(1, count, sharex=sharex, squeeze=False)[0]
    return figure, list(axes)


def _pretrain_loss(run: RunData) -> Figure | None:
    steps, loss = _steps(run.pretrain, lambda row: row.get("loss"))
    if not steps:
        return None
    figure, (ax,) = _panels(1)
    ax.plot(steps, loss, lw=1, color="#333333", label="train")
    # The writer flattens per-source validation losses to val_loss/<source>; a nested dict also reads.
    sources = sorted(
        {key.split("/", 1)[1] for row in run.pretrain for key in row if key.startswith("val_loss/")}
    )
    for source in sources:
        ax.plot(
            *_steps(run.pretrain, lambda row, s=source: row.get(f"val_loss/{s}")),
            marker="o",
            ms=3,
            label=f"val {source}",
        )
    nested = sorted(
        {s for row in run.pretrain if isinstance(row.get("val_loss"), dict) for s in row["val_loss"]}
    )
    for source in nested:
        ax.plot(
            *_steps(run.pretrain, lambda row, s=source: (row.get("val_loss") or {}).get(s)),
            marker="o",
            ms=3,
            label=f"val {source}",
        )
    ax.set(xlabel="step", ylabel="loss", title="pretraining loss")
    ax.legend(fontsize=7)
    return figure


def _format_share(run: RunData) -> Figure | None:
    rows = [row for row in run.rl if isinstance(row.get("format_share"), dict)]
    if not rows:
        return None
    figure, (ax,) = _panels(1)
    steps = [row["step"] for row in rows]
    names = run.formats
    shares = [[number(row["format_share"].get(name)) or 0.0 for row in rows] for name in names]
    ax.stackplot(steps, shares, labels=names, colors=format_colors(names), alpha=0.9)
    ax.set(
        xlabel="RL step", ylabel="share of rollouts", ylim=(0, 1), title=f"format share · {run.algo or 'RL'}"
    )
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    return figure


def _traced(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RL lines whose rollouts were traced and had n-grams (a step of very short rollouts has none)."""
    return [row for row in rows if isinstance(row.get("provenance"), dict) and row["provenance"].get("ngrams")]


def _source_colors(sources: Sequence[str]) -> list[str]:
    others = iter(SOURCE_COLORS * (len(sources) // len(SOURCE_COLORS) + 1))
    return [FORMAT_COLORS.get(name) or next(others) for name in sources]


def _echo_share(run: RunData) -> Figure | None:
    """Where the rollouts' n-grams are found, step by step: in one pretraining source alone (one band
    each), in several, or nowhere (novel). The bands sum to 1; no format rule is involved."""
    rows = _traced(run.rl)
    if not rows:
        return None
    sources = list(rows[-1]["provenance"]["unique_share"])
    alone = [[number(row["provenance"]["unique_share"].get(s)) or 0.0 for row in rows] for s in sources]
    novel = [number(row["provenance"]["novelty"]) or 0.0 for row in rows]
    shared = [max(0.0, 1 - sum(column) - new) for *column, new in zip(*alone, novel, strict=True)]
    figure, (ax,) = _panels(1)
    colors = [*_source_colors(sources), SHARED_COLOR, NOVEL_COLOR]
    labels = [f"{s} alone" for s in sources] + ["several sources", "novel"]
    ax.stackplot([row["step"] for row in rows], [*alone, shared, novel], labels=labels, colors=colors,
                 alpha=0.9, edgecolor="#999999", linewidth=0.3)  # fmt: skip
    n = rows[-1]["provenance"].get("n")
    ax.set(xlabel="RL step", ylabel=f"share of rollout {n}-grams", ylim=(0, 1), title=f"echo share · {run.algo or 'RL'}")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    return figure


def _accuracy(run: RunData) -> Figure | None:
    """Training accuracy, then per benchmark RL's periodic pass@1, pass@k and maj@k (largest k)."""
    benchmarks = sorted({eval_benchmark(line) for line in run.rl_eval})
    if not run.rl and not benchmarks:
        return None
    figure, axes = _panels(1 + len(benchmarks))
    ax = axes[0]
    ax.plot(*_steps(run.rl, lambda row: row.get("accuracy")), lw=1, label="rollout accuracy")
    ax.plot(*_steps(run.rl, lambda row: row.get("reward_mean")), lw=1, ls="--", label="reward")
    ax.set(xlabel="RL step", ylim=(0, 1), title="training")
    ax.legend(fontsize=7)
    for ax, bench in zip(axes[1:], benchmarks, strict=True):
        lines = [line for line in run.rl_eval if eval_benchmark(line) == bench]
        sampled = lines[-1].get("sampled") or {}
        ks = sorted(int(key.split("@")[1]) for key in sampled if key.startswith("pass@"))
        curves = [("greedy", "pass@1", "pass@1 (greedy)", "o")]
        if ks:  # the largest k: where pass@k and maj@k part ways most
            curves += [
                ("sampled", f"pass@{ks[-1]}", f"pass@{ks[-1]}", "s"),
                ("sampled", f"maj@{ks[-1]}", f"maj@{ks[-1]}", "^"),
            ]
        for mode, key, label, marker in curves:
            values = _steps(lines, lambda line, m=mode, k=key: (line.get(m) or {}).get(k))
            ax.plot(*values, marker=marker, ms=3, label=label)
        ax.set(xlabel="RL step", ylim=(0, 1), title=bench)
        ax.legend(fontsize=7)
    return figure


def _format_accuracy(run: RunData) -> Figure | None:
    rows = [row for row in run.rl if isinstance(row.get("format_accuracy"), dict)]
    if not rows:
        return None
    figure, (ax,) = _panels(1)
    for name, color in zip(run.formats, format_colors(run.formats), strict=True):
        steps, acc = _steps(rows, lambda row, n=name: row["format_accuracy"].get(n))
        if steps:  # a format with no rollouts has accuracy None: a gap, never a 0
            ax.plot(steps, acc, lw=1, marker=".", ms=3, color=color, label=name)
    ax.set(xlabel="RL step", ylabel="accuracy", ylim=(0, 1), title="rollout accuracy per format")
    ax.legend(fontsize=7)
    return figure


def _kl(run: RunData) -> Figure | None:
    if not any(
        number(row.get("kl_k1")) is not None or number(row.get("entropy")) is not None for row in run.rl
    ):
        return None
    figure, axes = _panels(3)
    for name in ("kl_k1", "kl_k2", "kl_k3"):
        axes[0].plot(*_steps(run.rl, lambda row, n=name: row.get(n)), lw=1, label=name.removeprefix("kl_"))
    axes[0].set(xlabel="RL step", title="KL to the reference (per token)")
    axes[0].legend(fontsize=7)
    axes[1].plot(*_steps(run.rl, lambda row: row.get("entropy")), lw=1, color="#8172B3")
    axes[1].set(xlabel="RL step", title="entropy (per token)")
    axes[2].plot(
        *_steps(run.rl, lambda row: row.get("response_length")), lw=1, color="#937860", label="mean tokens"
    )
    twin = axes[2].twinx()
    twin.plot(
        *_steps(run.rl, lambda row: row.get("truncation_rate")),
        lw=1,
        ls="--",
        color="#C44E52",
        label="truncated",
    )
    twin.set(ylim=(0, 1))
    axes[2].set(xlabel="RL step", title="response length · truncation (dashed)")
    return figure


def _passk(run: RunData) -> Figure | None:
    """Unbiased pass@k and maj@k at every k = 1..K, before (dashed) and after (solid) RL, one panel
    per benchmark (each rung of a ladder its own), on the prompts both evaluated; a dotted line
    marks the crossover, the k from which the base curve stays at or above the RL one."""
    panels = [found for bench in ladder_order([run]) if (found := run_curves(run, bench)) is not None]
    if not panels:
        return None
    figure, axes = _panels(len(panels), sharex=False)
    for ax, curves in zip(axes, panels, strict=True):
        for phase, style, label in (("base", "--", "before"), ("final", "-", "after")):
            ax.plot(curves.ks, curves.passk[phase], style, lw=1.2, color="#4C72B0", label=f"pass@k {label}")
            ax.plot(curves.ks, curves.majk[phase], style, lw=1.2, color="#C44E52", label=f"maj@k {label}")
        k = crossover(curves.passk["final"], curves.passk["base"])
        if k is not None and k > 1:
            ax.axvline(k, ls=":", color="#444444", lw=1, label=f"base ≥ RL from k={k}")
        ax.set_xscale("log", base=2)
        ticks = [k for k in curves.ks if k & (k - 1) == 0]  # the powers of two, written plainly
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.set(xlabel="k", ylim=(0, 1))
        ax.set_title(f"{curves.benchmark} · {curves.prompts} prompts\n{curve_summary(curves)}", fontsize=8)
        ax.legend(fontsize=7)
    return figure


# Chart key (names the PNG file) -> (caption on the page, what the page says when it is absent, drawing).
RUN_CHARTS: dict[str, tuple[str, str, RunChart]] = {
    "format_share": ("Format share over RL steps", "RL has not run", _format_share),
    "echo_share": (
        "Echo share over RL steps: the rollouts' n-grams found in one pretraining source alone, in several, or nowhere",
        "RL has not run, or its rollouts were not traced to the pretraining data",
        _echo_share,
    ),
    "accuracy": ("Training accuracy; pass@1, pass@k and maj@k over RL steps", "RL has not run", _accuracy),
    "passk": ("pass@k and maj@k at k = 1..K, before and after RL", "no sampling before and after RL", _passk),
    "format_accuracy": ("Accuracy per format over RL steps", "RL has not run", _format_accuracy),
    "kl": ("KL, entropy and response length over RL steps", "RL has not run", _kl),
    "pretrain": ("Pretraining loss", "pretraining has not run", _pretrain_loss),
}


def render_comparison(
    runs: Sequence[RunData], label: Callable[[RunData], str], title: str, path: Path
) -> Path | None:
    """Side-by-side curves of runs that differ in one setting (KL coefficient, algorithm): rollout
    accuracy, the share of each run's winning format, KL k1 and, where rollouts were traced, the
    share of n-grams found in each run's main source alone (its dominant source at the last step)."""
    runs = [run for run in runs if run.rl]
    if len(runs) < 2:
        return None
    traced = [run for run in runs if _traced(run.rl)]
    figure, axes = _panels(4 if traced else 3, title_room=0.3)
    for run in traced:
        shares = _traced(run.rl)[-1]["provenance"]["unique_share"]
        main = max(shares, key=lambda s: number(shares[s]) or 0.0)
        values = _steps(_traced(run.rl), lambda row, s=main: row["provenance"]["unique_share"].get(s))
        axes[3].plot(*values, lw=1, label=f"{label(run)}: {main}")
    if traced:
        axes[3].set(xlabel="RL step", ylim=(0, 1), title="n-grams in the main source alone")
    for run in runs:
        top = dominant(run.rl[-1].get("format_share")) or ("other", 0.0)
        axes[0].plot(*_steps(run.rl, lambda row: row.get("accuracy")), lw=1, label=label(run))
        axes[1].plot(
            *_steps(run.rl, lambda row, f=top[0]: (row.get("format_share") or {}).get(f)),
            lw=1,
            label=f"{label(run)}: {top[0]}",
        )
        axes[2].plot(*_steps(run.rl, lambda row: row.get("kl_k1")), lw=1, label=label(run))
    axes[0].set(xlabel="RL step", ylim=(0, 1), title="rollout accuracy")
    axes[1].set(xlabel="RL step", ylim=(0, 1), title="share of the winning format")
    axes[2].set(xlabel="RL step", title="KL k1 (per token)")
    for ax in axes:
        ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return save(figure, path)


def render_dose(series: DoseSeries, path: Path) -> Path:
    """After RL against the KL dose (evenly spaced: the sweep's doses step x10): the shares of the
    default's winning format and of the runner-up, and pass@1 / pass@k, each a mean with its 95 %
    interval over seeds (over prompts with one seed) as error bars."""
    figure, axes = _panels(2, title_room=0.3)
    x = list(range(len(series.doses)))
    panels = {0: [f"{series.winner} share", f"{series.runner_up} share"], 1: ["pass@1", f"pass@{series.k}"]}
    colors = [*format_colors([series.winner, series.runner_up or "other"]), "#4C72B0", "#C44E52"]
    for index, labels in panels.items():
        for j, label in enumerate(labels):
            if label not in series.curves:
                continue
            points = [(i, e) for i, e in zip(x, series.curves[label], strict=True) if e is not None]
            means = [e.effect for _, e in points]
            low = [e.effect - e.interval[0] if e.interval else 0.0 for _, e in points]
            high = [e.interval[1] - e.effect if e.interval else 0.0 for _, e in points]
            axes[index].errorbar(
                [i for i, _ in points], means, yerr=[low, high], marker="os"[j], ms=4, capsize=3, lw=1,
                ls=("-", "--")[j], color=colors[2 * index + j], label=label,
            )  # fmt: skip
    seeds = max((e.n_seeds for curve in series.curves.values() for e in curve if e), default=0)
    basis = f"{seeds} seeds" if seeds >= 2 else "1 seed: intervals over prompts"
    for ax, what in zip(axes, ("share of generations", "accuracy"), strict=True):
        ax.set_xticks(x, [f"{d:g}" + (" (default)" if d == series.default else "") for d in series.doses])
        ax.set(xlabel="KL coefficient", ylabel=what, ylim=(0, 1))
        ax.legend(fontsize=7)
    figure.suptitle(f"KL dose · {series.setting} · {series.benchmark} after RL ({basis})", fontsize=10)
    return save(figure, path)
