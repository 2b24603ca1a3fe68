"""The controlled world's config: the easy level (`difficulty`), the `hard` transfer split, and the
difficulty ladder of harder levels that share the pretraining pool (echochamber.data.world draws
the problems; see its docstring for how the splits stay disjoint)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from echochamber.errors import UserError

SPLITS = ("pretrain", "rl", "test", "hard")  # every world's splits; each ladder rung adds `{k}step`
# Beyond 8 steps questions outgrow GSM8K's size and families start repeating their moves.
MAX_STEPS = 8


@dataclass
class Difficulty:
    """The knob: how many steps, and how large the numbers may get."""

    min_steps: int = 1
    max_steps: int = 2
    max_number: int = 20  # largest number stated in a question
    max_factor: int = 5  # largest multiplier or divisor (keeps products small for tiny models)
    max_result: int = 100  # largest value any step may produce

    def validate(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= MAX_STEPS:
            raise UserError(
                f"difficulty needs 1 <= min_steps <= max_steps <= {MAX_STEPS}, got {self.min_steps}..{self.max_steps}"
            )
        if self.max_number < 10:  # below that most moves have no legal operand (values stay >= 2)
            raise UserError(f"difficulty.max_number must be at least 10, got {self.max_number}")
        if not 2 <= self.max_factor <= self.max_number:
            raise UserError(f"difficulty.max_factor must be in 2..max_number, got {self.max_factor}")
        if self.max_result < self.max_number:
            raise UserError(
                f"difficulty.max_result ({self.max_result}) must be >= max_number ({self.max_number})"
            )


def _hard_default() -> Difficulty:
    return Difficulty(min_steps=3, max_steps=5, max_number=100, max_factor=10, max_result=1000)


@dataclass
class Rung:
    """One rung of the difficulty ladder: problems of exactly `steps` steps over `difficulty`'s numbers.

    `share` of the pretraining pool (round(share x n_pretrain) problems) is drawn at this rung; the
    easy level keeps the rest. Its test split `{steps}step` holds n_test problems. Only the step
    count rises: larger numbers would also test the tokenizer's digits, not composition alone.
    """

    steps: int
    share: float = 0.0  # of the pretraining pool; 0 = a test split only (a level pretraining never shows)

    @property
    def split(self) -> str:
        return f"{self.steps}step"


@dataclass
class WorldConfig:
    """Split sizes, seed, the difficulty of the easy level (pretrain, rl, test) and of `hard`, and the
    ladder of harder levels that share the pretraining pool."""

    seed: int = 0
    n_pretrain: int = 30000
    n_rl: int = 2000
    n_test: int = 500
    n_hard: int = 500
    difficulty: Difficulty = field(default_factory=Difficulty)  # easy: learnable by a ~1M model on CPU
    hard: Difficulty = field(default_factory=_hard_default)  # transfer split: more steps, larger numbers
    ladder: list[Rung] = field(default_factory=list)  # harder levels: a share of the pool + a test split each

    def validate(self) -> None:
        for split in SPLITS:
            if getattr(self, f"n_{split}") < 0:
                raise UserError(f"n_{split} must be >= 0")
        self.difficulty.validate()
        self.hard.validate()
        self._validate_ladder()
        d, h = self.difficulty, self.hard
        rung_steps = {rung.steps for rung in self.ladder if rung.share > 0}
        more_steps = any(s > d.max_steps and s not in rung_steps for s in range(h.min_steps, h.max_steps + 1))
        larger = h.max_number > d.max_number or h.max_result > d.max_result or h.max_factor > d.max_factor
        if not (more_steps or larger):
            raise UserError(
                "hard must allow more steps or larger numbers than the pretraining pool "
                "(difficulty and the ladder's rungs with a share), else it has no problems"
            )

    def _validate_ladder(self) -> None:
        for rung in self.ladder:
            if rung.steps <= self.difficulty.max_steps:
                raise UserError(
                    f"ladder: a {rung.steps}-step rung is not harder than difficulty "
                    f"(max_steps {self.difficulty.max_steps})"
                )
            if rung.steps > MAX_STEPS:
                raise UserError(
                    f"ladder: a {rung.steps}-step rung is beyond the generator's limit of {MAX_STEPS} steps"
                )
            if not 0 <= rung.share < 1:
                raise UserError(
                    f"ladder: the {rung.steps}-step rung's share must be in [0, 1), got {rung.share}"
                )
        steps = [rung.steps for rung in self.ladder]
        if len(set(steps)) < len(steps):
            raise UserError(f"ladder: two rungs have the same steps ({sorted(steps)})")
        total = sum(rung.share for rung in self.ladder)
        if total >= 1:
            raise UserError(
                f"ladder: the shares sum to {total:g}; the easy level needs the rest of the pool (< 1)"
            )

    def rung_counts(self) -> dict[str, int]:
        """Rung split -> its problems in the pretraining pool, easiest first (the easy level has
        n_pretrain - their sum)."""
        rungs = sorted(self.ladder, key=lambda r: r.steps)
        return {rung.split: round(rung.share * self.n_pretrain) for rung in rungs if rung.share > 0}

    def rung_level(self, rung: Rung) -> Difficulty:
        return replace(self.difficulty, min_steps=rung.steps, max_steps=rung.steps)

    def pool_levels(self) -> list[Difficulty]:
        """What the pretraining pool can contain: the easy level and every rung with a share."""
        return [self.difficulty, *(self.rung_level(r) for r in self.ladder if r.share > 0)]


def rung_splits(config: WorldConfig) -> tuple[str, ...]:
    """The ladder's test splits (`2step`, `3step`, ...), easiest first."""
    return tuple(rung.split for rung in sorted(config.ladder, key=lambda r: r.steps))


def world_splits(config: WorldConfig) -> tuple[str, ...]:
    """Every split of this world: SPLITS, then one test split per ladder rung."""
    return (*SPLITS, *rung_splits(config))
