"""The vLLM backend (GPU): vLLM's `LLM.generate` behind the same Sampler interface as the torch one.
vLLM itself is imported only when a vLLM sampler is built, so it stays an optional dependency."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel

from echochamber.errors import UserError
from echochamber.model.sampler import Sample, check_request, decode_texts, encode_texts
from echochamber.model.sampling import SamplingParams, sample_key


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
        requests = [
            vllm.SamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else -1,
                max_tokens=params.max_new_tokens,
                seed=sample_key(params.seed, pid, 0) & 0x7FFFFFFF,
                logprobs=0,  # 0 = only the sampled token's log-prob
                ignore_eos=params.ignore_eos,
                stop_token_ids=[] if params.ignore_eos or eos is None else [eos],
                detokenize=False,  # texts are decoded here, the same way as the torch backend's
            )
            for pid in prompt_ids
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, requests, use_tqdm=self.progress)
        results = []
        for pid, output in zip(prompt_ids, outputs, strict=True):
            row = []
            for i, completion in enumerate(output.outputs):
                token_ids = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs, token_ids, strict=True)]
                stopped = completion.finish_reason == "stop"
                row.append(Sample(pid, i, token_ids, "", logprobs, truncated=not stopped))
            results.append(row)
        decode_texts(self.tokenizer, results, None if params.ignore_eos else eos)
        return results


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


def build_vllm_sampler(
    model: PreTrainedModel | str | Path, tokenizer, progress: bool, dtype: str = "auto"
) -> VLLMSampler:
    try:
        import vllm
    except ImportError as error:
        raise UserError("backend 'vllm' needs the vllm package: pip install 'echochamber[vllm]' (GPU only)") from error
    resolved = vllm_dtype(model, dtype)  # before the model is saved: an in-memory model's own dtype
    if isinstance(model, PreTrainedModel):
        # vLLM loads weights from a folder; a temporary HF folder is the documented route.
        folder = Path(tempfile.mkdtemp(prefix="echochamber-vllm-"))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model = folder
    llm = vllm.LLM(model=str(model), dtype=resolved, logprobs_mode="processed_logprobs", seed=0)
    return VLLMSampler(llm=llm, tokenizer=tokenizer, progress=progress)
