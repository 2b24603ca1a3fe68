"""The controlled math world: GSM8K-like word problems whose structured solution we know.

A problem is a chain. It states a start quantity, then 1..k *moves*; each move states one new
quantity in the question and adds one arithmetic step (+, -, *, // with an exact integer result) to
the solution. A family (shopping, ages, rates, ...) is a table of moves; a move may follow another
when the *kind* of the running value matches (a count of items, an amount of money, a speed...);
the tables themselves live in echochamber.data.world_families.
The solution stays structured (named quantities, ordered steps), so every output format is
rendered from the same facts by echochamber.formats.render and no format can be more "right" than
another.

The difficulty ladder: `difficulty` is the easy level (the RL prompts and `test`); each rung of
`ladder` is a harder level of exactly k steps over the same numbers. A rung puts a declared share of
the pretraining pool at its level (rendered in every format like the rest; share 0 = a test split
only) and has its own test split `{k}step` (benchmark `world-{k}step`), so the eval suite shows each
rung's headroom at base and its change after RL on easy prompts.

Splits never share a question text. `test` and `hard` are drawn first and do not depend on the
pool sizes of later splits, so growing the pretraining pool never changes the test set. `hard`
keeps only problems the pretraining pool cannot contain (more steps or larger numbers than the easy
level and every rung with a share), so it is disjoint by construction, not only by deduplication;
rung test splits are disjoint from `test` and from each other by their step counts. A world without
a ladder generates exactly the problems it generated before the ladder existed.
"""

from __future__ import annotations

import functools
import json
import keyword
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echochamber.config import config_hash, from_dict, to_dict
from echochamber.data.records import Record
from echochamber.data.world_config import SPLITS as SPLITS  # re-exported: the world's fixed split names
from echochamber.data.world_config import Difficulty, WorldConfig, rung_splits, world_splits
from echochamber.data.world_families import FAMILIES, NAMES, PEOPLE, RELATIVES, Family
from echochamber.errors import UserError
from echochamber.formats.render import RENDER_STYLES, render, solution_text

# Bump when the same config would produce different problems or renderings.
GENERATOR_VERSION = "1"
# Give up on a split after this many draws in a row that were duplicates or dead ends.
_MAX_MISSES = 5000


def _order(config: WorldConfig) -> tuple[str, ...]:
    """Generation order: held-out splits first, so their content depends only on (seed, their own
    size) and the pool's size never changes them; rung test splits come after `test` and `hard` so
    a world without a ladder draws exactly what it drew before the ladder existed."""
    return ("test", "hard", *rung_splits(config), "rl", "pretrain")


@dataclass(frozen=True)
class Quantity:
    name: str  # snake_case variable name, e.g. "price_per_pencil"
    value: int


@dataclass(frozen=True)
class Step:
    """`name = left op right` with `op` in + - * / (division is exact), and how to say it.

    `statement` is a sentence with a `{calc}` slot for the arithmetic (or the boxed answer), e.g.
    "Mia has {calc} apples left."; it may start lower-case: renderers capitalise.
    """

    name: str
    op: str
    left: str
    right: str
    value: int
    statement: str


@dataclass(frozen=True)
class Problem:
    """One word problem: its text, its integer answer and the solution every format is rendered from."""

    id: str
    family: str
    question: str
    answer: int
    quantities: tuple[Quantity, ...]
    steps: tuple[Step, ...]


# Variable names a rendered program already uses, so no quantity may take them.
_RESERVED = {"result", "simple_math_problem"}


def snake_case(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _operand(rng: random.Random, op: str, value: int, d: Difficulty, cap: int | None) -> int | None:
    """A random operand for `op` on the running `value` keeping every number in range, or None."""
    if op == "/":
        divisors = [k for k in range(2, min(d.max_factor, value // 2) + 1) if value % k == 0]
        return rng.choice(divisors) if divisors else None
    top = min(d.max_result, cap or d.max_result)
    lo, hi = {
        "+": (2, min(d.max_number, top - value)),
        "-": (2, min(d.max_number, value - 2)),  # results stay >= 2: "1 apples" reads wrong
        "r-": (value + 2, min(d.max_number, top)),
        "*": (2, min(d.max_factor, top // value)),
    }[op]
    return rng.randint(lo, hi) if lo <= hi else None


def _apply(op: str, value: int, n: int) -> int:
    return {"+": value + n, "-": value - n, "r-": n - value, "*": value * n, "/": value // n}[op]


def _next_person(rng: random.Random, family: Family, slots: dict[str, str], taken: set[str]) -> None:
    pool = RELATIVES if family.relatives else NAMES
    pick = rng.choice([p for p in pool if p not in taken])
    taken.add(pick)
    slots["next"] = f"{slots['name']}'s {pick}" if family.relatives else pick
    slots["next_var"] = snake_case(pick)


def _draft(
    rng: random.Random, family: Family, d: Difficulty, n_steps: int, problem_id: str
) -> Problem | None:
    """One problem of `family` with `n_steps` steps, or None when the random walk hits a dead end."""
    name, pron, poss, obj = rng.choice(PEOPLE)
    friend = rng.choice([n for n in NAMES if n != name])
    slots = {
        "name": name,
        "pron": pron,
        "poss": poss,
        "obj": obj,
        "friend": friend,
        "who": name,
        "who_var": snake_case(name),
    }
    for names, entries in family.pools:
        slots.update(zip(names, rng.choice(entries), strict=True))
    taken = {name, friend}
    _next_person(rng, family, slots, taken)

    kind, quantity, sentences = rng.choice(family.starts)
    value = rng.randint(2, min(d.max_number, family.cap or d.max_number))
    used_names: set[str] = set()
    current = _unique(snake_case(quantity.format(**slots)), used_names)
    quantities = [Quantity(current, value)]
    text = [rng.choice(sentences).format(v=value, **slots)]
    steps: list[Step] = []
    used_moves: set[int] = set()
    for index in range(n_steps):
        last = index == n_steps - 1
        fitting = [
            i
            for i, m in enumerate(family.moves)
            if m.needs == kind and (last or m.gives in family.live_kinds)
        ]
        # Prefer moves not used yet (new wording) over repeating one; shuffle within each group.
        fresh = [i for i in fitting if i not in used_moves]
        repeats = [i for i in fitting if i in used_moves]
        order = rng.sample(fresh, len(fresh)) + rng.sample(repeats, len(repeats))
        for i in order:
            n = _operand(rng, family.moves[i].op, value, d, family.cap)
            if n is not None:
                break
        else:
            return None
        move = family.moves[i]
        used_moves.add(i)
        filled = {**slots, "n": n, "calc": "{calc}"}
        operand = _unique(snake_case(move.quantity.format(**filled)), used_names)
        result = _unique(snake_case(move.result.format(**filled)), used_names)
        quantities.append(Quantity(operand, n))
        left, right = (operand, current) if move.op == "r-" else (current, operand)
        value = _apply(move.op, value, n)
        steps.append(Step(result, move.op.lstrip("r"), left, right, value, move.statement.format(**filled)))
        sentence = rng.choice(move.sentences)
        if sentence:
            text.append(sentence.format(**filled))
        if last:
            text.append(move.question.format(**filled))
        if move.shift:
            slots["who"], slots["who_var"] = slots["next"], slots["next_var"]
            _next_person(rng, family, slots, taken)
        current, kind = result, move.gives
    question = " ".join(_capitalize(s) for s in text)
    return Problem(problem_id, family.name, question, value, tuple(quantities), tuple(steps))


def _unique(name: str, used: set[str]) -> str:
    candidate, k = name, 2
    while candidate in used or candidate in _RESERVED or keyword.iskeyword(candidate):
        candidate, k = f"{name}_{k}", k + 1
    used.add(candidate)
    return candidate


def fits(problem: Problem, d: Difficulty) -> bool:
    """Whether `problem` lies inside what difficulty `d` can generate (steps, numbers, factors)."""
    values = {q.name: q.value for q in problem.quantities}
    factors = [values[s.right] for s in problem.steps if s.op in "*/"]
    return (
        d.min_steps <= len(problem.steps) <= d.max_steps
        and all(q.value <= d.max_number for q in problem.quantities)
        and all(s.value <= d.max_result for s in problem.steps)
        and all(f <= d.max_factor for f in factors)
    )


def _generate_split(config: WorldConfig, split: str, seen: set[str]) -> list[Problem]:
    """One split's problems. The pool is the easy level's draw followed by each rung's (own streams,
    so a ladder leaves the easy part a prefix of the ladder-free pool)."""
    if split == "hard":
        levels = config.pool_levels()
        return _draw(
            config, split, config.hard, config.n_hard, seen, lambda p: any(fits(p, d) for d in levels)
        )
    rungs = {rung.split: rung for rung in config.ladder}
    if split in rungs:
        return _draw(config, split, config.rung_level(rungs[split]), config.n_test, seen)
    if split != "pretrain":
        return _draw(config, split, config.difficulty, getattr(config, f"n_{split}"), seen)
    counts = config.rung_counts()
    problems = _draw(config, split, config.difficulty, config.n_pretrain - sum(counts.values()), seen)
    for rung_split, n in counts.items():
        problems += _draw(config, f"pretrain-{rung_split}", config.rung_level(rungs[rung_split]), n, seen)
    return problems


def _draw(
    config: WorldConfig,
    stream: str,
    d: Difficulty,
    n: int,
    seen: set[str],
    reject: Callable[[Problem], bool] | None = None,
) -> list[Problem]:
    """`n` problems of difficulty `d`, new to `seen` and not `reject`ed, from the random stream `stream`."""
    # A string seed is hashed with SHA-512 by `random`: stable across runs and Python processes.
    rng = random.Random(f"echochamber-world:{config.seed}:{stream}")
    problems: list[Problem] = []
    misses = 0
    while len(problems) < n:
        family = rng.choice(FAMILIES)
        problem = _draft(
            rng, family, d, rng.randint(d.min_steps, d.max_steps), f"world-{stream}-{len(problems):06d}"
        )
        if problem is None or problem.question in seen or (reject is not None and reject(problem)):
            misses += 1
            if misses >= _MAX_MISSES:
                raise UserError(
                    f"world split '{stream}': only {len(problems)} of {n} distinct problems found; "
                    "lower its size or widen its difficulty"
                )
            continue
        misses = 0
        seen.add(problem.question)
        problems.append(problem)
    return problems


@functools.lru_cache(maxsize=2)  # a mixture asks for the same pool once per format
def _generate_cached(config_json: str, upto: str) -> dict[str, tuple[Problem, ...]]:
    config = from_dict(WorldConfig, json.loads(config_json))
    seen: set[str] = set()
    out: dict[str, tuple[Problem, ...]] = {}
    order = _order(config)
    for split in order[: order.index(upto) + 1]:
        out[split] = tuple(_generate_split(config, split, seen))
    return out


def generate_world(config: WorldConfig, splits: tuple[str, ...] | None = None) -> dict[str, list[Problem]]:
    """Split name -> problems (all of `world_splits` by default), deterministic in `config`. Only the
    splits asked for are returned (splits generated before them in the fixed order are generated
    too, to keep them disjoint)."""
    config.validate()
    known = world_splits(config)
    splits = known if splits is None else splits
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise UserError(
            f"unknown world split '{unknown[0]}' (choose from {', '.join(known)}; "
            "a k-step rung in world.ladder adds split 'kstep')"
        )
    if not splits:
        return {}
    order = _order(config)
    upto = max(splits, key=order.index)
    generated = _generate_cached(json.dumps(to_dict(config), sort_keys=True), upto)
    return {split: list(generated[split]) for split in splits}


def world_records(config: WorldConfig, split: str, style: str) -> list[Record]:
    """The problems of one split as records rendered in one style (prompt = question text)."""
    if style not in RENDER_STYLES:
        raise UserError(f"unknown world style '{style}' (choose from {', '.join(RENDER_STYLES)})")
    return [
        Record(
            id=p.id,
            prompt=p.question,
            solution=solution_text(p, style),
            answer=str(p.answer),
            source="world",
            style=style,
        )
        for p in generate_world(config, (split,))[split]
    ]


def write_world(config: WorldConfig, out_dir: Path) -> dict[str, Any]:
    """Write `{split}.{style}.jsonl` for every split and style plus `manifest.json`; return the manifest.

    Everything is written into a sibling temp folder that is renamed into place at the end, so a
    crash never leaves a folder that looks complete. An existing world folder is replaced; any
    other non-empty folder is refused rather than deleted.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not (
        out_dir.is_dir() and (_is_world_folder(out_dir) or not any(out_dir.iterdir()))
    ):
        raise UserError(f"{out_dir} exists and is not a world folder; choose a new --out")
    world = generate_world(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write_files(config, world, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # leave nothing half-written behind, then re-raise
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return manifest


def _is_world_folder(folder: Path) -> bool:
    """Whether `folder` holds a world written by this module (only such a folder may be replaced)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == "echochamber.data.world"


def _write_files(config: WorldConfig, world: dict[str, list[Problem]], folder: Path) -> dict[str, Any]:
    files = {}
    splits = world_splits(config)
    for split in splits:
        for style in RENDER_STYLES:
            name = f"{split}.{style}.jsonl"
            with open(folder / name, "w") as fh:
                for problem in world[split]:
                    fh.write(json.dumps(render(problem, style)) + "\n")
            files[name] = len(world[split])
    manifest = {
        "generator": "echochamber.data.world",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "config_hash": config_hash(config),
        "config": to_dict(config),
        "counts": {split: len(world[split]) for split in splits},
        "files": files,
        "families": {split: _counts(p.family for p in world[split]) for split in splits},
        "steps": {split: _counts(str(len(p.steps)) for p in world[split]) for split in splits},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _counts(keys: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
