"""The eval suite's settings: one dataclass, `EvalConfig`, the only home of their fields and defaults.

It is the `eval:` section of a study and of an RL config, and what `echochamber eval` reads (its
`--benchmark` names the benchmark). `EvalConfig.evaluation(benchmark, world, seed, formats)` turns it
into one benchmark's `Evaluation`, filling in what the config leaves to the run: the world behind the
world-* benchmarks, the seed (a study's and `echochamber eval`'s evaluations sample with seed 0, RL's
periodic ones with the RL run's seed) and the format registry (written out in full). An Evaluation is
what the suite runs and what results.json's `config` records; an evaluation folder's config.yaml holds
it as an EvalConfig again (`echochamber eval CKPT --config FOLDER/config.yaml` repeats it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from echochamber.data.benchmarks import check_benchmark
from echochamber.data.world import WorldConfig
from echochamber.errors import UserError
from echochamber.eval.context import OverContext
from echochamber.eval.passk import MAX_SAMPLES, default_ks
from echochamber.formats.registry import DEFAULT_FORMATS, FormatSpec, Registry, build_registry
from echochamber.model.sampling_params import SAMPLER_DTYPES, SamplingParams


@dataclass
class EvalConfig:
    """Which benchmarks, how many generations per prompt, how they are drawn and scored."""

    benchmarks: list[str] = field(default_factory=lambda: ["world-test", "world-hard"])  # data.benchmarks names
    n: int = 64  # sampled generations per prompt for pass@k / maj@k (0 = greedy only)
    temperature: float = 0.7  # of the sampled generations (the paper: T=0.7, top-p 0.95)
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 2048  # the paper's evaluation limit
    greedy: bool = True  # also one greedy generation per prompt, for pass@1
    ks: list[int] | None = None  # pass@k / maj@k sizes; default 1, 2, 4, ... and n
    limit: int | None = None  # evaluate only the first `limit` prompts of each benchmark
    # Sample i of prompt p draws its randomness from (seed, p, i). None: the run's seed (an RL run's
    # `seed` for its periodic evaluations; 0 for a study's evaluations and `echochamber eval`).
    seed: int | None = None
    truncated_is_wrong: bool = True  # a generation cut off by max_new_tokens scores 0 and casts no vote
    # Prompts whose length + max_new_tokens exceed the model's context: error (before any compute),
    # skip them, or shorten their budget to what the context leaves (eval/context.py); results.json records it.
    over_context: OverContext = "error"
    data: str | None = None  # real-data folder (default: $ECHOCHAMBER_DATA, then shared/data)
    # The world behind world-test/world-hard. None: the run's world (a study's `world`, an RL config's
    # `prompts.world`), the default world for `echochamber eval`; where set, it must be that world.
    world: WorldConfig | None = None
    # The formats generations are labelled and graded by (formats.registry). None: the run's (a
    # study's `formats`, an RL config's `formats`), the default registry for `echochamber eval`;
    # where set, it must be the run's.
    formats: list[str | FormatSpec] | None = None
    batch_size: int = 256  # sequences per sampler batch
    backend: Literal["torch", "vllm"] = "torch"  # sampler backend (vllm: GPU only)
    # Precision of the generations: auto = the weights' own dtype (the checkpoint's for
    # `echochamber eval`, the in-memory model's for RL); run_eval casts the checkpoint to an explicit
    # one, the vLLM backend is told it (see model.sampler.sampler_precision).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"  # where run_eval puts the model: auto (cuda when available), cpu, cuda, ...
    workers: int = 2  # grader processes when the caller brings no grader (a study and RL share theirs)

    def validate(self) -> None:
        """Checks that need no run; a benchmark name is checked with its world (`evaluation`)."""
        if not self.benchmarks:
            raise UserError("eval.benchmarks must name at least one benchmark")
        if not 0 <= self.n <= MAX_SAMPLES:
            raise UserError(f"n must be between 0 and {MAX_SAMPLES}, got {self.n}")
        if self.n == 0 and not self.greedy:
            raise UserError("nothing to evaluate: n is 0 and greedy is off")
        for k in self.ks or []:
            if not 1 <= k <= self.n:
                raise UserError(f"every k in ks must be between 1 and n={self.n}, got {k}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be at least 1, got {self.limit}")
        if self.batch_size < 1 or self.workers < 1:
            raise UserError("batch_size and workers must be at least 1")
        if self.dtype not in SAMPLER_DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; known: {', '.join(SAMPLER_DTYPES)}")
        self.sampling_params()  # SamplingParams checks temperature, top_p, top_k, max_new_tokens
        if self.formats is not None:
            build_registry(self.formats)  # every declaration checked before anything runs

    def check_world(self, world: WorldConfig, where: str) -> None:
        """A world set here must be the run's (`where` names it): one run, one world."""
        if self.world is not None and asdict(self.world) != asdict(world):
            raise UserError(f"eval.world differs from {where}: set the world once, under '{where}'")

    def check_formats(self, formats: list[str | FormatSpec], where: str) -> None:
        """Formats set here must be the run's (`where` names them): one run, one registry."""
        if self.formats is not None and build_registry(self.formats).record() != build_registry(formats).record():
            raise UserError(f"eval.formats differs from {where}: set the formats once, under '{where}'")

    def evaluation(
        self,
        benchmark: str,
        world: WorldConfig | None = None,
        seed: int = 0,
        formats: list[str | FormatSpec] | None = None,
    ) -> Evaluation:
        """This config on one benchmark, with the run's `world`, `seed` and `formats` where it leaves
        them None (no formats anywhere: the default registry). The formats are recorded in full, so
        results.json says exactly how every generation was labelled and graded."""
        entries = self.formats if self.formats is not None else formats
        resolved = replace(
            self,
            seed=self.seed if self.seed is not None else seed,
            world=self.world or world or WorldConfig(),
            formats=list(build_registry(entries if entries is not None else DEFAULT_FORMATS).specs),
        )
        resolved.validate()
        check_benchmark(benchmark, resolved.world)
        return Evaluation(benchmark, resolved)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed or 0,
            logprobs=False,  # an evaluation grades text; nothing reads the log-probs
        )

    def passes(self) -> list[tuple[str, int, SamplingParams]]:
        """(mode, generations per prompt, sampling params) for each kind of generation asked for."""
        passes = []
        if self.greedy:
            passes.append(("greedy", 1, SamplingParams(0.0, max_new_tokens=self.max_new_tokens, seed=self.seed or 0, logprobs=False)))
        if self.n > 0:
            passes.append(("sampled", self.n, self.sampling_params()))
        return passes

    def resolved_ks(self) -> list[int]:
        return sorted(set(self.ks)) if self.ks else default_ks(self.n)


@dataclass(frozen=True)
class Evaluation:
    """One benchmark under a resolved EvalConfig (its world and seed set): what the suite runs."""

    benchmark: str
    config: EvalConfig

    @property
    def world(self) -> WorldConfig:
        assert self.config.world is not None, "an Evaluation's config is resolved (EvalConfig.evaluation)"
        return self.config.world

    def registry(self) -> Registry:
        """The formats this evaluation labels and grades by."""
        assert self.config.formats is not None, "an Evaluation's config is resolved (EvalConfig.evaluation)"
        return build_registry(self.config.formats)

    def record(self) -> dict[str, Any]:
        """The settings as results.json's `config` holds them: the benchmark, then every EvalConfig
        field but the benchmark list."""
        settings = {key: value for key, value in asdict(self.config).items() if key != "benchmarks"}
        return {"benchmark": self.benchmark, **settings}

    def config_file(self) -> dict[str, Any]:
        """The folder's config.yaml: this evaluation as the EvalConfig that loads back into it (its
        benchmark as the list, its world, seed and registry resolved)."""
        return asdict(replace(self.config, benchmarks=[self.benchmark]))

    def generation_settings(self) -> dict[str, Any]:
        """Everything that decides the content of generations.jsonl: a resumed run must match it."""
        config = self.config
        settings = {
            "benchmark": self.benchmark,
            "n": config.n,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
            "max_new_tokens": config.max_new_tokens,
            "seed": config.seed,
            "truncated_is_wrong": config.truncated_is_wrong,
            "backend": config.backend,
            "dtype": config.dtype,
            "formats": self.registry().record(),  # how the file's rows were labelled and graded
        }
        if self.benchmark.startswith("world-"):
            settings["world"] = asdict(self.world)
        return settings
