"""The RL stage's config: one typed dataclass tree, the paper's settings as defaults, YAML presets.

`RLConfig` defaults reproduce Echo Chamber's RL (OpenRLHF settings from its sweep scripts); the
packaged presets under `echochamber/configs/rl/` scale it down (`cpu`: minutes on 2 cores). Each
algorithm reads its own section (`ppo`, `grpo`, `reinforce`, `ei`); everything else (prompts,
sampling, reward, evaluation, checkpoints, logging) is shared. Every choice the field notes list as
a source of confusion is a named option here: KL estimator and placement, loss aggregation,
advantage normalisation, what happens to truncated responses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from echochamber.config import load_config, preset_names, read_preset
from echochamber.data.world import WorldConfig
from echochamber.errors import UserError
from echochamber.eval.config import EvalConfig, Evaluation
from echochamber.eval.context import OverContext
from echochamber.formats.registry import FormatSpec, build_registry, default_entries

ALGORITHMS = ("ppo", "grpo", "reinforce", "ei")
KLPlacement = Literal["reward", "loss"]
# The paper's KL coefficient, for PPO, GRPO and REINFORCE alike (the report judges "at the default KL" by it).
DEFAULT_KL_COEF = 1e-3
# Named here, with the options they are; rl/losses.py implements them.
KLEstimator = Literal["k1", "k2", "k3"]
Aggregation = Literal["token_mean", "seq_mean", "constant"]


def _positive(section: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"{section}{name} must be > 0, got {value}")


def _kl_coef(section: str, coef: float) -> None:
    # Every estimator x placement pair is allowed (the study compares them); only k1 in the reward and
    # k2 in the loss give an unbiased reverse-KL gradient (see losses.kl_estimate).
    if coef < 0:
        raise UserError(f"{section}kl_coef must be >= 0, got {coef}")


@dataclass
class PromptConfig:
    """Where the RL prompts come from (the gold answers come with them)."""

    dataset: str = "world"  # "world" = the controlled world's RL split; else an adapter of data.adapters (gsm8k, math, ...)
    path: str | None = None  # local file or folder for an adapter (e.g. shared/data/gsm8k/train.jsonl)
    split: str | None = None  # adapter split (default: the adapter's usual one, "train" for gsm8k)
    limit: int | None = None  # use only the first this many prompts
    world: WorldConfig = field(default_factory=WorldConfig)  # must be the world the policy was pretrained on
    # Prompts whose length + the generation budget exceed the policy's context: error (before any
    # compute), skip them, or shorten their budget (eval/context.py); the "prompts" metrics line records it.
    over_context: OverContext = "error"

    def validate(self) -> None:
        if self.dataset != "world":
            from echochamber.data.adapters import get_spec

            get_spec(self.dataset)  # unknown adapter -> UserError listing the known ones
        _positive("prompts.", limit=self.limit)


@dataclass
class VLLMRolloutConfig:
    """The colocated vLLM engine of `rollout.backend: vllm` (GPU): in the trainer's process, on its GPU."""

    memory: float = 0.3  # fraction of the GPU's memory the engine may take (weights + KV cache); the trainer keeps the rest
    # The engine's precision: auto = the policy's weights' (float32 in RL, whatever rl.dtype computes
    # in); bfloat16 samples faster and moves its log-probs away from the trainer's (the metrics
    # line's logprob_gap says by how much).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def validate(self) -> None:
        if not 0 < self.memory < 1:
            raise UserError(f"rollout.vllm.memory must be in (0, 1), got {self.memory}")


@dataclass
class RolloutConfig:
    """Sampling and reward for PPO/GRPO steps (EI samples with its own settings, see EIConfig).

    No top-p/top-k here on purpose: the ratio and the KL to the reference compare full-support
    distributions at one temperature; under a truncated sampling distribution the reference can
    give a sampled token probability 0 and the KL is infinite.
    """

    prompts_per_step: int = 64  # prompts drawn per step (a seeded permutation per epoch, no repeats in a step)
    samples_per_prompt: int = 8  # G: the group size
    temperature: float = 0.7
    max_new_tokens: int = 1024
    truncation: Literal["zero", "mask"] = "zero"  # truncated responses: reward 0 and trained, or left out of the loss
    batch_size: int = 512  # sampler rows per batch (memory knob; results do not depend on it)
    grader_workers: int = 2  # sandbox / math-verify worker processes per rank
    # Who samples: the policy itself through the project's sampler (torch), or a colocated vLLM engine
    # that gets the policy's weights after every update (vllm, GPU; samples differ from torch's: its
    # own random streams). Either way the ratio's old log-probs are the sampled distribution's.
    backend: Literal["torch", "vllm"] = "torch"
    vllm: VLLMRolloutConfig = field(default_factory=VLLMRolloutConfig)

    def validate(self) -> None:
        _positive(
            "rollout.", prompts_per_step=self.prompts_per_step, samples_per_prompt=self.samples_per_prompt,
            temperature=self.temperature, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
            grader_workers=self.grader_workers,
        )  # fmt: skip


@dataclass
class GRPOConfig:
    """Group-relative policy optimisation (no critic): advantage = normalised reward within a prompt's group."""

    lr: float = 1e-6
    clip: float = 0.2  # PPO ratio clip epsilon (TRL: epsilon)
    kl_coef: float = DEFAULT_KL_COEF  # beta
    kl_estimator: KLEstimator = "k3"  # the paper's GRPO: k3 ...
    kl_placement: KLPlacement = "loss"  # ... added to the per-token loss ("reward": subtracted after the normalisation)
    normalization: Literal["zscore", "center"] = "zscore"  # (r - mean) / (max(std, std_floor) + std_eps), or r - mean
    std_eps: float = 1e-6  # the paper's epsilon added to the group std (TRL uses 1e-4)
    std_floor: float = 0.0  # lower bound on the group std before dividing (0 = off); stops near-ties blowing up
    aggregation: Aggregation = "seq_mean"  # token_mean / seq_mean (OpenRLHF 0.6, TRL "grpo") / constant (Dr. GRPO)
    epochs: int = 1  # passes over each rollout (TRL: num_iterations)
    minibatches: int = 1  # optimizer steps per pass

    def validate(self) -> None:
        _positive("grpo.", lr=self.lr, clip=self.clip, epochs=self.epochs, minibatches=self.minibatches)
        if self.std_eps < 0 or self.std_floor < 0:
            raise UserError("grpo.std_eps and grpo.std_floor must be >= 0")
        if self.normalization == "zscore" and self.std_eps == 0 and self.std_floor == 0:
            raise UserError("grpo.normalization 'zscore' needs std_eps > 0 or std_floor > 0 (zero-variance groups divide by 0)")
        _kl_coef("grpo.", self.kl_coef)


@dataclass
class PPOConfig:
    """PPO with a critic (initialised from the policy checkpoint, fresh value head) and GAE."""

    lr: float = 1e-6
    critic_lr: float = 7e-6
    clip: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95  # GAE lambda
    kl_coef: float = DEFAULT_KL_COEF
    kl_estimator: KLEstimator = "k1"  # the paper's PPO: k1 per token ...
    kl_placement: KLPlacement = "reward"  # ... subtracted from the reward
    whiten_advantages: bool = True
    aggregation: Aggregation = "seq_mean"
    epochs: int = 1  # passes over each rollout
    minibatches: int = 1  # optimizer steps per pass

    def validate(self) -> None:
        _positive(
            "ppo.", lr=self.lr, critic_lr=self.critic_lr, clip=self.clip, value_clip=self.value_clip,
            epochs=self.epochs, minibatches=self.minibatches,
        )  # fmt: skip
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise UserError("ppo.gamma and ppo.lam must be in [0, 1]")
        _kl_coef("ppo.", self.kl_coef)


@dataclass
class REINFORCEConfig:
    """REINFORCE with a group baseline (no critic): the paper's third estimator (OpenRLHF
    `reinforce_baseline`). Advantage of token t of sample i: (r_i - baseline) - beta x the KL
    penalties from t on, whitened over the batch; see reinforce.py for the maths."""

    lr: float = 1e-6
    baseline: Literal["mean", "loo"] = "mean"  # the group's mean reward (the paper) or the others' mean (RLOO)
    clip: float | None = 0.2  # PPO's ratio clip (the paper: OpenRLHF's actor loss); null = no clipping
    kl_coef: float = DEFAULT_KL_COEF
    kl_estimator: KLEstimator = "k1"  # the paper: k1 ...
    kl_placement: KLPlacement = "reward"  # ... per token in the reward, credited from each token on
    whiten_advantages: bool = True  # over every response token of the batch (the paper)
    aggregation: Aggregation = "seq_mean"
    epochs: int = 1  # passes over each rollout
    minibatches: int = 1  # optimizer steps per pass

    def validate(self) -> None:
        _positive("reinforce.", lr=self.lr, clip=self.clip, epochs=self.epochs, minibatches=self.minibatches)
        _kl_coef("reinforce.", self.kl_coef)


@dataclass
class EIConfig:
    """Expert Iteration: sample, keep verified-correct responses, de-duplicate, SFT; `rounds` times."""

    rounds: int = 3  # the paper: 3 (150M), 2 (1B)
    samples_per_prompt: int = 64
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int | None = None  # None = rollout.max_new_tokens
    init: Literal["base", "last"] = "base"  # SFT each round from the base model (paper) or continue the last round's
    dedupe: bool = True  # drop exact-duplicate responses to the same prompt
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 256  # sequences per optimizer step

    def validate(self) -> None:
        _positive(
            "ei.", rounds=self.rounds, samples_per_prompt=self.samples_per_prompt, temperature=self.temperature,
            max_new_tokens=self.max_new_tokens, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
        )  # fmt: skip
        if not 0 < self.top_p <= 1:
            raise UserError(f"ei.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class RLConfig:
    """One RL run: start from `policy` (any HF causal-LM folder), write everything under `out`."""

    policy: str  # HF causal-LM folder (weights + tokenizer) to start from
    out: str  # run folder: config.yaml, metrics.jsonl, tb/, rollouts/, eval/, checkpoints/step_N/, final/
    reference: str | None = None  # KL reference model folder (default: `policy`)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    # The formats rollouts and evaluations are labelled and graded by: built-in names and declared
    # formats (formats.registry). Changing them changes rewards where an answer rule differs.
    formats: list[str | FormatSpec] = field(default_factory=default_entries)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # the eval suite (world and seed: the run's)
    eval_every: int = 50  # steps between evaluations (and at step 0 and the end); 0 = never
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reinforce: REINFORCEConfig = field(default_factory=REINFORCEConfig)
    ei: EIConfig = field(default_factory=EIConfig)
    epochs: float = 10.0  # passes over the prompt set (the paper: 10); a step is one rollout batch
    max_steps: int | None = None  # stop after this many steps instead (wins over `epochs`)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # Adam betas (every optimiser)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global gradient norm; null = no clipping (norm still logged)
    micro_batch_size: int = 16  # sequences per forward/backward (memory knob; the update does not depend on it)
    # The trainer's compute precision (model/precision.py): "auto" = bfloat16 autocast where the
    # hardware multiplies bfloat16 natively (GPUs, CPUs with AMX/AVX512-BF16), float32 elsewhere;
    # config.yaml records what it resolved to. It covers every forward of the update, the reference
    # pass, PPO's critic and EI's SFT (on a CPU with eager attention: precision.set_attention). Weights, optimiser state and the sampler stay float32, so under
    # bfloat16 the update's log-probs differ from the sampler's by bfloat16's rounding: the ratio
    # starts near, not at, 1 (the update's approx_kl measures the gap; docs/performance.md).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # "auto": the reference model is loaded and run only when the update uses it (KL coefficient > 0);
    # "always": also at KL 0, for the KL-to-reference curves (kl_k1..k3, kl_loss) of a KL-0 run.
    reference_pass: Literal["auto", "always"] = "auto"
    checkpoint_every: int = 20  # steps between checkpoints (and always at the last step)
    keep_checkpoints: int = 2
    seed: int = 0
    tensorboard: bool = True
    wandb_project: str | None = None  # also log to this W&B project (needs `pip install wandb`)
    progress: bool = True

    def validate(self) -> None:
        _positive(
            "", epochs=self.epochs, max_steps=self.max_steps, micro_batch_size=self.micro_batch_size,
            checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
        )  # fmt: skip
        if self.eval_every < 0:
            raise UserError(f"eval_every must be >= 0 (0 = never), got {self.eval_every}")
        build_registry(self.formats)  # every declaration checked before anything runs
        self.eval.check_world(self.prompts.world, "prompts.world")
        self.eval.check_formats(self.formats, "formats")
        for benchmark in self.eval.benchmarks:
            self.evaluation(benchmark)  # each benchmark checked now, not at the first evaluation
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}")
        _positive("", grad_clip=self.grad_clip)


    def kl_coef(self, algo: str) -> float:
        """The KL coefficient `algo`'s update uses (EI has none: 0)."""
        return 0.0 if algo == "ei" else float(getattr(self, algo).kl_coef)

    def uses_reference(self, algo: str) -> bool:
        """Whether a run of `algo` loads the reference and runs its forward each step. At KL 0 no
        term of any update reads the reference's log-probs (the KL terms are 0 x finite), so the
        pass (about a sixth of a GRPO step on CPU) is skipped unless `reference_pass` is "always"."""
        return algo != "ei" and (self.kl_coef(algo) > 0 or self.reference_pass == "always")

    def evaluation(self, benchmark: str) -> Evaluation:
        """The periodic evaluation of one benchmark: the world of the prompts, the run's seed and formats."""
        return self.eval.evaluation(benchmark, self.prompts.world, self.seed, self.formats)


RL_PRESETS: tuple[str, ...] = preset_names("rl")


def rl_preset(name: str) -> dict[str, Any]:
    """A packaged preset as plain data (a base that a YAML file and `--set` overrides go on top of)."""
    return read_preset("rl", name, "RL")


def load_rl_config(config: str | None, overrides: list[str] | None = None) -> RLConfig:
    """`config` is a YAML file path or a preset name (`cpu`); None = the paper's defaults."""
    if config is not None and not Path(config).exists() and config in RL_PRESETS:
        return load_config(RLConfig, overrides=overrides, base=rl_preset(config))
    return load_config(RLConfig, config, overrides)
