"""Run and sweep folders -> plain data for the report (`collect`); the findings are findings.py's.

A run folder holds `run.json`, `config.yaml`, `pretrain/metrics.jsonl`, `rl/metrics.jsonl` ("rl" lines
per step, "eval" lines per periodic evaluation), `rl/config.yaml`, and the eval suite's folders
`eval/{base,final}/<benchmark>/` (results.json, generations.jsonl, prompts.jsonl: eval/store.py).
A sweep folder holds `sweep.json` and one run folder per cell. Anything missing is left empty here and reported as "not run" on the
page; only malformed files are errors.

Only finished work is a result. Where run.json records the pipeline's stages, an `eval/<phase>`
folder counts once its stage (`eval-base`, `eval-final`) is recorded done: a folder of a stage still
running is partial, and one recorded not done after a config change is stale (the pipeline marks it
so until the stage starts over). The same holds for RL's periodic evaluations standing in for a
phase: only those of an RL stage recorded done. A sweep cell mid-RL therefore has no "final"
evaluation, and no finding counts it (the page's cells table shows its stages).

RL's periodic evaluations run with RL's own settings (fewer samples, other splits), so they stand in
for a lone run that has no eval stage result at all (both phases then come from them, on one
footing), never beside an `eval/<phase>` folder and never in a sweep, whose cells are compared on the
sweep's evaluation settings: a cell whose final evaluation crashed is unfinished, not a stand-in.

The format names come from the run folder too: each evaluation's results.json records the registry
it labelled by, a run's config.yaml the study's (`formats`), and a run recorded before registries
existed had the default one (`RunData.formats`, `EvalData.formats`, `SweepData.formats`).

Per prompt, the generations are reduced to what the findings' statistics use (greedy correctness,
unbiased pass@k and maj@k, the format counts and correct counts, and our format against the paper's
rule where rows record `paper_format`) plus the greedy and first sampled generation for the
browser, so a 64-sample GSM8K evaluation does not stay in memory as text. maj@k counts votes by the
row's `vote` (the answer's math-verify equivalence class) where recorded, else by the older
spelling key of the answer.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from echochamber.config import read_yaml
from echochamber.errors import UserError
from echochamber.eval.passk import maj_at_ks, pass_at_k
from echochamber.eval.store import GENERATIONS_FILE, PROMPTS_FILE, RESULTS_FILE, SETTINGS_FILE, read_prompts
from echochamber.formats.registry import format_names
from echochamber.report.results import merge_names, number
from echochamber.runlog import METRICS_FILE, iter_jsonl, read_metrics
from echochamber.verify.normalize import vote_key

PHASES = ("base", "final")  # eval/base = before RL, eval/final = after RL
# run.json's names of the stages whose outputs the report reads (study/pipeline.py STAGES).
EVAL_STAGES = {"base": "eval-base", "final": "eval-final"}
RL_STAGE = "rl"
_ROW_KEYS = ("prompt_id", "mode", "correct", "format", "truncated")


@dataclass
class PromptEval:
    """One prompt of one evaluation, reduced to what the findings and the browser need."""

    prompt_id: str
    gold: str
    greedy: dict[str, Any] | None = None  # the greedy generation row
    sample: dict[str, Any] | None = None  # the first sampled generation row
    n_sampled: int = 0
    n_correct: int = 0
    # Over the sampled generations, else the greedy one: format -> count, format -> correct count,
    # and (our format, the paper rule's format or None where not recorded) -> count.
    formats: Counter[str] = field(default_factory=Counter)
    format_correct: Counter[str] = field(default_factory=Counter)
    format_pairs: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    # (our format, provenance's dominant source or None) -> count, over the generations that carry
    # provenance; `untraced` counts the others.
    source_pairs: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    untraced: int = 0
    pass_at: dict[int, float] = field(default_factory=dict)  # unbiased pass@k, k = 1..n_sampled
    maj_at: dict[int, float] = field(default_factory=dict)

    def count(self, row: dict[str, Any]) -> None:
        """Add one generation row to the format statistics."""
        self.formats[row["format"]] += 1
        self.format_correct[row["format"]] += bool(row["correct"])
        self.format_pairs[(row["format"], row.get("paper_format"))] += 1
        provenance = row.get("provenance")
        if isinstance(provenance, dict):
            self.source_pairs[(row["format"], provenance.get("dominant_source"))] += 1
        else:
            self.untraced += 1

    @property
    def pass1(self) -> float | None:
        """Greedy correctness (the paper's pass@1), else the sampled accuracy."""
        if self.greedy is not None:
            return float(self.greedy["correct"])
        return self.n_correct / self.n_sampled if self.n_sampled else None

    def share(self, name: str) -> float | None:
        total = sum(self.formats.values())
        return self.formats[name] / total if total else None


@dataclass
class EvalData:
    """One evaluation folder: results.json as written, per-prompt reductions, prompt texts if findable."""

    benchmark: str
    folder: Path
    source: str  # where it came from, for the page ("eval/final" or "rl/eval/step_000200")
    results: dict[str, Any] | None
    prompts: dict[str, PromptEval]
    prompt_texts: dict[str, str]
    note: str | None = None  # why something is missing (e.g. prompt texts in a folder older than prompts.jsonl)

    @property
    def formats(self) -> tuple[str, ...]:
        """The labels of the registry this evaluation recorded (`other` last), and any label its
        generations carry beyond them."""
        recorded = format_names(((self.results or {}).get("config") or {}).get("formats"))
        seen = {name for prompt in self.prompts.values() for name in prompt.formats}
        return merge_names([recorded, tuple(sorted(seen - set(recorded)))])

    def rule_table(self) -> dict[tuple[str, str], int] | None:
        """(our format, the paper rule's format) -> generations, over the prompts' counted
        generations; None when any of them lacks `paper_format` (written before it was recorded)."""
        table: Counter[tuple[str, str]] = Counter()
        for prompt in self.prompts.values():
            for (ours, paper), count in prompt.format_pairs.items():
                if paper is None:
                    return None
                table[(ours, str(paper))] += count
        return dict(table) or None

    def source_table(self) -> dict[tuple[str, str | None], int] | None:
        """(our format, provenance's dominant source or None) -> generations, over the prompts'
        counted generations; None when any of them carries no provenance (untraced)."""
        if not self.prompts or any(prompt.untraced for prompt in self.prompts.values()):
            return None
        table: Counter[tuple[str, str | None]] = Counter()
        for prompt in self.prompts.values():
            table.update(prompt.source_pairs)
        return dict(table)

    def sources(self) -> list[str]:
        """The pretraining sources provenance was measured against (manifest order), from results.json."""
        for mode in ("sampled", "greedy"):
            provenance = ((self.results or {}).get(mode) or {}).get("provenance")
            if isinstance(provenance, dict):
                return list(provenance.get("unique_share") or {})
        return sorted({source for _, source in self.source_table() or {} if source})


@dataclass
class RunData:
    name: str
    path: Path
    params: dict[str, Any]  # the sweep cell's parameters ({} for a lone run)
    info: dict[str, Any]  # run.json
    config: dict[str, Any]  # the resolved study config
    rl_config: dict[str, Any]  # rl/config.yaml
    rl_prompts: dict[str, Any]  # rl/prompts.json: the prompt set's size and what the context check did
    pretrain: list[dict[str, Any]]
    rl: list[dict[str, Any]]  # "rl" metrics lines, one per step
    rl_eval: list[dict[str, Any]]  # "eval" metrics lines: RL's periodic evaluations
    evals: dict[str, dict[str, EvalData]]  # phase -> benchmark -> evaluation
    parameters: int | None = None  # of the pretrained model (pretrain/final), None before it exists
    missing: str | None = None  # set when the folder does not exist yet

    @property
    def algo(self) -> str | None:
        for key, value in self.params.items():
            if "algo" in key.lower():
                return str(value)
        if self.rl and self.rl[0].get("algo"):
            return str(self.rl[0]["algo"])
        return self.info.get("algo")

    @property
    def kl_coef(self) -> float | None:
        for key, value in self.params.items():
            if "kl_coef" in key.lower() or key.lower().rsplit(".", 1)[-1] == "kl":
                return number(value)
        section = self.rl_config.get(self.algo or "", {})
        return number(section.get("kl_coef")) if isinstance(section, dict) else None

    @property
    def seed(self) -> Any:
        """The unit of replication: the sweep cell's seed, else the study's pretraining seed, else
        the RL seed; None when none is recorded."""
        for key, value in self.params.items():
            if "seed" in key.lower():
                return value
        for section in (self.config.get("pretrain"), self.config, self.rl_config):
            if isinstance(section, dict) and "seed" in section:
                return section["seed"]
        return None

    @property
    def formats(self) -> tuple[str, ...]:
        """The run's format labels (`other` last): its study's registry (config.yaml), else its RL
        config's, else the default one (a run recorded before registries existed)."""
        return format_names(self.config.get("formats") or self.rl_config.get("formats"))

    def eval(self, phase: str, benchmark: str | None) -> EvalData | None:
        return self.evals.get(phase, {}).get(benchmark) if benchmark is not None else None

    def benchmarks(self) -> list[str]:
        return sorted({name for phase in self.evals.values() for name in phase})


@dataclass
class SweepData:
    """What the report shows: a sweep, or a lone run as a sweep of one cell (`kind` says which)."""

    name: str
    path: Path
    kind: str  # "run" or "sweep"
    axes: dict[str, list[Any]]
    runs: list[RunData]

    @property
    def formats(self) -> tuple[str, ...]:
        """Every run's format labels, in the order the runs declare them, `other` last."""
        return merge_names([run.formats for run in self.runs])

    def progress(self) -> str:
        """How many cells have a finished final evaluation, i.e. count in the findings."""
        done = sum(bool(run.evals.get("final")) for run in self.runs)
        waiting = "" if done == len(self.runs) else "; the others count in no finding until they finish"
        return f"{done} of {len(self.runs)} cells finished (final evaluation recorded done){waiting}"


def collect(path: Path) -> SweepData:
    """Read a sweep folder (sweep.json) or a run folder into plain data."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    sweep = _read_json(path / "sweep.json")
    if sweep is not None:
        runs = []
        for cell in sweep.get("cells") or []:
            if not isinstance(cell, dict) or "name" not in cell:
                raise UserError(f"{path / 'sweep.json'}: every cell needs a name")
            folder = path / cell.get("dir", f"cells/{cell['name']}")
            runs.append(load_run(folder, name=cell["name"], params=cell.get("params") or {}, stand_in=False))
        return SweepData(
            str(sweep.get("name", path.name)), path, "sweep", dict(sweep.get("axes") or {}), runs
        )
    if not any((path / part).exists() for part in ("run.json", "pretrain", "rl", "eval")):
        raise UserError(
            f"{path} is neither a run folder (run.json, pretrain/, rl/, eval/) nor a sweep folder (sweep.json)"
        )
    run = load_run(path)
    return SweepData(run.name, path, "run", {}, [run])


def load_run(
    path: Path, name: str | None = None, params: dict[str, Any] | None = None, stand_in: bool = True
) -> RunData:
    """One run folder. `stand_in`: RL's periodic evaluations may stand in for the eval stages where
    none of them counts (module doc); a sweep's cells pass False."""
    info = _read_json(path / "run.json") or {}
    run = RunData(
        name=name or str(info.get("name") or path.name),
        path=path,
        params=dict(params or {}),
        info=info,
        config=read_yaml(path / "config.yaml") if (path / "config.yaml").is_file() else {},
        rl_config=read_yaml(path / "rl" / "config.yaml") if (path / "rl" / "config.yaml").is_file() else {},
        rl_prompts=_read_json(path / "rl" / "prompts.json") or {},
        pretrain=read_metrics(path / "pretrain" / METRICS_FILE, "pretrain"),
        rl=read_metrics(path / "rl" / METRICS_FILE, "rl"),
        rl_eval=read_metrics(path / "rl" / METRICS_FILE, "eval"),
        evals={},
        parameters=parameter_count(path / "pretrain" / "final"),
        missing=None if path.is_dir() else f"{path} does not exist yet",
    )
    stages = info.get("stages") if isinstance(info.get("stages"), dict) else None
    evaluated = {phase: _eval_folders(path, phase, stages) for phase in PHASES}
    stand_in = stand_in and not any(evaluated.values())
    for phase in PHASES:
        run.evals[phase] = {}
        for source, folder in evaluated[phase] or (_rl_stand_in(path, phase, stages) if stand_in else []):
            data = load_eval(folder, source)
            run.evals[phase][data.benchmark] = data
    return run


def _done(stages: dict[str, Any] | None, name: str) -> bool:
    """Whether run.json records stage `name` done. Without `stages` (a folder older than run.json,
    or not written by the pipeline) whatever is there counts."""
    return stages is None or bool((stages.get(name) or {}).get("done"))


def _eval_folders(run_dir: Path, phase: str, stages: dict[str, Any] | None) -> list[tuple[str, Path]]:
    """(source label, folder) of each benchmark the eval stage of `phase` evaluated, once it is done."""
    folder = run_dir / "eval" / phase
    if not (folder.is_dir() and _done(stages, EVAL_STAGES[phase])):
        return []
    return [(f"eval/{phase}", child) for child in sorted(folder.iterdir()) if child.is_dir()]


def _rl_stand_in(run_dir: Path, phase: str, stages: dict[str, Any] | None) -> list[tuple[str, Path]]:
    """RL's own periodic evaluation standing in for `phase`, once RL is done: its step-0 evaluation
    is the base model and its last one the final policy (labelled with the step, so the page says so)."""
    if not _done(stages, RL_STAGE):
        return []
    steps = sorted(
        (int(child.name.removeprefix("step_")), child)
        for child in (run_dir / "rl" / "eval").glob("step_*")
        if child.name.removeprefix("step_").isdigit()
    )
    if not steps or (phase == "base" and steps[0][0] != 0) or (phase == "final" and steps[-1][0] == 0):
        return []
    _, chosen = steps[0] if phase == "base" else steps[-1]
    return [(f"rl/eval/{chosen.name}", child) for child in sorted(chosen.iterdir()) if child.is_dir()]


def parameter_count(folder: Path) -> int | None:
    """Parameters of the model saved in `folder`, from its safetensors headers (`get_slice` reads
    shapes, no weight; tied embeddings are stored once); None without a safetensors file."""
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        try:
            with safe_open(path, framework="numpy") as tensors:
                total += sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())  # noqa: SIM118 (safe_open is not iterable)
        except SafetensorError as err:
            raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    return total if files else None


def load_eval(folder: Path, source: str) -> EvalData:
    """results.json and generations.jsonl of one evaluation folder (either may be missing)."""
    results = _read_json(folder / RESULTS_FILE)
    settings = (results or {}).get("config") or _read_json(folder / SETTINGS_FILE) or {}
    benchmark = str((results or {}).get("benchmark") or settings.get("benchmark") or folder.name)
    prompts: dict[str, PromptEval] = {}
    votes: dict[str, list[tuple[Hashable | None, bool]]] = defaultdict(list)
    path = folder / GENERATIONS_FILE
    rows = iter_jsonl(path) if path.is_file() else iter(())
    for row in rows:
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise UserError(f"{path}: a generation row lacks {', '.join(missing)}")
        prompt = prompts.setdefault(row["prompt_id"], PromptEval(row["prompt_id"], str(row.get("gold", ""))))
        if row["mode"] == "greedy":
            prompt.greedy = row
            continue
        if prompt.sample is None or row.get("sample_index", 0) < prompt.sample.get("sample_index", 0):
            prompt.sample = row
        prompt.n_sampled += 1
        prompt.n_correct += bool(row["correct"])
        prompt.count(row)
        # The eval suite's vote rule: a truncated generation abstains when truncation counts as wrong.
        abstains = row["truncated"] and settings.get("truncated_is_wrong", True)
        votes[row["prompt_id"]].append((None if abstains else _vote(row), bool(row["correct"])))
    for prompt in prompts.values():
        if not prompt.n_sampled and prompt.greedy is not None:
            prompt.count(prompt.greedy)
    if votes:
        _score_samples(prompts, votes)
    texts, note = _prompt_texts(folder, prompts)
    return EvalData(benchmark, folder, source, results, prompts, texts, note)


def _vote(row: dict[str, Any]) -> Hashable | None:
    """What a generation votes for: the eval suite's `vote` (the answer's math-verify equivalence
    class, None = abstains) where the row records it, else the older spelling key of its answer
    (rows written before `vote` existed)."""
    if "vote" in row:
        vote = row["vote"]
        return None if vote is None else json.dumps(vote, sort_keys=True)  # any JSON value, hashable
    return vote_key(row.get("answer"))


def _score_samples(
    prompts: dict[str, PromptEval], votes: dict[str, list[tuple[Hashable | None, bool]]]
) -> None:
    """Per-prompt pass@k and maj@k at every k from 1 to the prompt's n samples, with the eval
    suite's estimators and votes (so their means at results.json's ks are its numbers), for the
    k = 1..n curves. Every k costs what the largest does: maj_at_ks counts all subset sizes at once."""
    for prompt_id, pairs in votes.items():
        n = len(pairs)
        ks = range(1, n + 1)
        correct = [ok for _, ok in pairs]
        prompt = prompts[prompt_id]
        prompt.pass_at = {k: pass_at_k(n, sum(correct), k) for k in ks}
        prompt.maj_at = maj_at_ks([vote for vote, _ in pairs], correct, ks)


def _prompt_texts(folder: Path, prompts: dict[str, PromptEval]) -> tuple[dict[str, str], str | None]:
    """Prompt id -> question text, from the prompts.jsonl the eval suite wrote beside its generations.
    Texts are dropped (with a note) if its golds disagree with the generations': ids would then lie."""
    rows = read_prompts(folder)
    if rows is None:
        return {}, "prompt texts unavailable: the evaluation predates prompts.jsonl (evaluate again into its folder)"
    golds = {str(row.get("id")): str(row.get("gold")) for row in rows}
    if any(prompt.prompt_id in golds and golds[prompt.prompt_id] != prompt.gold for prompt in prompts.values()):
        return {}, f"prompt texts unavailable: {folder / PROMPTS_FILE} does not match the generations' answers"
    return {str(row.get("id")): str(row.get("prompt", "")) for row in rows}, None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# Grouping the cells of a sweep


def find_axis(sweep: SweepData, *needles: str) -> str | None:
    """The sweep axis whose name contains the first of `needles` that any axis contains
    (("kl_coef", "kl") finds "rl.ppo.kl_coef" before "rl.ppo.kl_estimator")."""
    for needle in needles:
        for axis in sweep.axes:
            if needle in axis.lower():
                return axis
    return None


def group_settings(sweep: SweepData, drop: Collection[str | None] = ()) -> dict[str, list[RunData]]:
    """Runs grouped by their parameters other than the seed and `drop`: the seeds of one setting,
    or the cells that differ only in the dropped axis. Keys are readable ("mixture=tinygsm")."""
    seeds = {axis for axis in sweep.axes if "seed" in axis.lower()}
    groups: dict[str, list[RunData]] = defaultdict(list)
    for run in sweep.runs:
        kept = [f"{k}={v}" for k, v in sorted(run.params.items()) if k not in seeds and k not in drop]
        groups[", ".join(kept) or ("all runs" if sweep.kind == "sweep" else run.name)].append(run)
    return dict(groups)
