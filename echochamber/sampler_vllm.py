"""The vLLM backend (GPU): vLLM's `LLM.generate` behind the same Sampler interface as the torch one.
Imported only when `backend="vllm"` is chosen, so vLLM stays an optional dependency."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel

from echochamber.errors import UserError
from echochamber.sampler import Sample, SamplingParams, check_request, decode_texts, encode_texts, sample_key


@dataclass
class VLLMSampler:
    """vLLM's `LLM.generate` behind the Sampler interface.

    Log-probs come from `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2): the distribution after
    temperature/top-k/top-p, matching `sampling_logprobs`. Seeds are per prompt (vLLM draws the n
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


def build_vllm_sampler(model: PreTrainedModel | str | Path, tokenizer, progress: bool) -> VLLMSampler:
    try:
        import vllm
    except ImportError as error:
        raise UserError("backend 'vllm' needs the vllm package: pip install 'echochamber[vllm]' (GPU only)") from error
    if isinstance(model, PreTrainedModel):
        # vLLM loads weights from a folder; a temporary HF folder is the documented route.
        folder = Path(tempfile.mkdtemp(prefix="echochamber-vllm-"))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model = folder
    llm = vllm.LLM(model=str(model), logprobs_mode="processed_logprobs", seed=0)
    return VLLMSampler(llm=llm, tokenizer=tokenizer, progress=progress)
