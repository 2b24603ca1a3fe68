"""The vLLM backend (GPU): vLLM's `LLM.generate` behind the same Sampler interface as the torch one.
vLLM itself is imported only when a vLLM sampler is built, so it stays an optional dependency.

Two uses. Evaluation builds an engine from a model or checkpoint and samples. RL rollouts build one
*colocated* engine for the whole run (`colocate_memory`: in this process, on the trainer's GPU, with
that fraction of its memory, as TRL's colocate mode does) and, after every update, `push_weights`
copies the policy's parameters into the engine's model in memory: no checkpoint round trip, and the
engine's prefix cache (computed by the old weights) is dropped."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel

from echochamber.errors import UserError
from echochamber.model.sampler import Sample, check_request, decode_texts, encode_texts
from echochamber.model.sampling import sample_key
from echochamber.model.sampling_params import SamplingParams


@dataclass
class VLLMSampler:
    """vLLM's `LLM.generate` behind the Sampler interface.

    Log-probs come from `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2): the distribution after
    temperature/top-k/top-p, as the torch backend's (`sampling.pick`). Seeds are per prompt (vLLM draws the n
    samples of a request from one seeded stream), so samples are reproducible for a fixed request
    but not equal to the torch backend's.
    """

    llm: object
    tokenizer: object
    progress: bool = False
    context: int | None = None  # the model's context: a request generates at most up to it, as the torch backend does

    def generate(
        self, prompts: Sequence[str], prompt_ids: Sequence[str], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        return self.generate_tokens(encode_texts(self.tokenizer, prompts), prompt_ids, n, params)

    def generate_tokens(
        self, prompt_token_ids: Sequence[Sequence[int]], prompt_ids: Sequence[str], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        import vllm

        check_request(prompt_ids, len(prompt_token_ids), n)
        eos = self.tokenizer.eos_token_id
        context = self.context or 0
        for pid, tokens in zip(prompt_ids, prompt_token_ids, strict=True):
            if context and len(tokens) >= context:
                raise UserError(f"prompt {pid!r} has {len(tokens)} tokens; the model's context is {context}")
        requests = [
            vllm.SamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else -1,
                max_tokens=min(params.max_new_tokens, context - len(tokens)) if context else params.max_new_tokens,
                seed=sample_key(params.seed, pid, 0) & 0x7FFFFFFF,
                logprobs=0 if params.logprobs else None,  # 0 = only the sampled token's log-prob
                ignore_eos=params.ignore_eos,
                stop_token_ids=[] if params.ignore_eos or eos is None else [eos],
                detokenize=False,  # texts are decoded here, the same way as the torch backend's
            )
            for pid, tokens in zip(prompt_ids, prompt_token_ids, strict=True)
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, requests, use_tqdm=self.progress)
        results = []
        for pid, output in zip(prompt_ids, outputs, strict=True):
            row = []
            for i, completion in enumerate(output.outputs):
                token_ids = list(completion.token_ids)
                logprobs = (
                    [step[token].logprob for step, token in zip(completion.logprobs, token_ids, strict=True)]
                    if params.logprobs else []
                )  # fmt: skip
                stopped = completion.finish_reason == "stop"
                if stopped and not params.ignore_eos and (not token_ids or token_ids[-1] != eos):
                    # RL trains on the choice to stop: a stopped sample must carry its EOS and its log-prob.
                    raise RuntimeError(f"vLLM stopped sample {i} of {pid!r} without returning its EOS token")
                row.append(Sample(pid, i, token_ids, "", logprobs, truncated=not stopped))
            results.append(row)
        decode_texts(self.tokenizer, results, None if params.ignore_eos else eos)
        return results

    def push_weights(self, model: PreTrainedModel) -> None:
        """Copy `model`'s parameters into the engine's model (a colocated engine's, in this process:
        `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights`, TRL's route)
        and drop the prefix cache, whose keys and values the old weights computed."""
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights((name, parameter.detach()) for name, parameter in model.named_parameters())
        self.llm.reset_prefix_cache()


def vllm_dtype(model: PreTrainedModel | str | Path, dtype: str = "auto") -> str:
    """The dtype vLLM is told to run in: `dtype` when given, else ("auto") the weights' own: an
    in-memory model's parameter dtype, or a checkpoint folder's recorded dtype (config.json's
    `dtype`, older `torch_dtype`; float32 when unrecorded, as in Hugging Face). vLLM's own "auto" is
    never used: it runs float32 weights in float16."""
    if dtype != "auto":
        return dtype
    if isinstance(model, PreTrainedModel):
        return str(model.dtype).removeprefix("torch.")
    path = Path(model) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read the checkpoint's dtype from {path}: {error}") from None
    return str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")


def check_vllm() -> None:
    """vLLM importable, or a one-line UserError (checked before any model is loaded)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError("backend 'vllm' needs the vllm package: pip install 'echochamber[vllm]' (GPU only)") from None


def build_vllm_sampler(
    model: PreTrainedModel | str | Path,
    tokenizer,
    progress: bool,
    dtype: str = "auto",
    *,
    colocate_memory: float | None = None,
) -> VLLMSampler:
    """An engine over `model` (in memory: saved to a temporary folder once, vLLM's loading route).
    With `colocate_memory` it runs in this process beside the trainer, on that fraction of the GPU's
    memory, and its weights can be replaced in memory (`VLLMSampler.push_weights`)."""
    check_vllm()
    import vllm

    resolved = vllm_dtype(model, dtype)  # before the model is saved: an in-memory model's own dtype
    context = None
    if isinstance(model, PreTrainedModel):
        context = model.config.max_position_embeddings
        # vLLM loads weights from a folder; a temporary HF folder is the documented route.
        folder = Path(tempfile.mkdtemp(prefix="echochamber-vllm-"))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model = folder
    options: dict = {"model": str(model), "dtype": resolved, "logprobs_mode": "processed_logprobs", "seed": 0}
    if colocate_memory is not None:
        _colocated_environment()
        options.update(
            gpu_memory_utilization=colocate_memory,
            # In this process (not vLLM's engine-core process): its model is reachable for load_weights.
            distributed_executor_backend="external_launcher",
            max_model_len=context,
        )
    llm = vllm.LLM(**options)
    return VLLMSampler(llm=llm, tokenizer=tokenizer, progress=progress, context=context)


def _colocated_environment() -> None:
    """The rendezvous variables vLLM's external launcher reads: torchrun's when it set them, else a
    single process's (a free local port, so concurrent runs do not collide)."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
