"""allocator.keep_large_tensors: a step's large tensors reuse their pages instead of being faulted in
again, once set directly or by the torch sampler. Each case runs in its own interpreter: the
setting is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Ten "steps", each making and dropping a [4096, 4096] float32 logits tensor (64 MiB, over glibc's
# largest mmap threshold) and a gradient of the same size; prints the minor page faults of each.
# "keep" sets the allocator first; "sample" draws a few tokens from a tiny model first.
STEPS = """
import json, resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from echochamber.allocator import keep_large_tensors
    assert keep_large_tensors()
if sys.argv[1] == "sample":
    from echochamber.data.tokenizer import train_bpe
    from echochamber.model.presets import build_model
    from echochamber.model.sampler import build_sampler
    from echochamber.model.sampling_params import SamplingParams
    tokenizer = train_bpe(["Natalia sold 48 clips.", "She sold half as many in May."] * 4, 300)
    model = build_model("tiny", len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    sampler = build_sampler(model, tokenizer)
    sampler.generate(["Natalia"], ["q0"], 2, SamplingParams(temperature=1.0, max_new_tokens=3))
h, w, faults = torch.randn(4096, 96), torch.randn(4096, 96), []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits = h @ w.T
    grad = torch.empty_like(logits).fill_(1.0)
    del logits, grad
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc knobs exist on Linux only")


@pytest.fixture(scope="module")
def faulting() -> None:
    """Skips where this C library or kernel already reuses the pages (nothing to keep)."""
    default = _faults("default")
    if min(default[-3:]) < 16_000:  # 2 x 64 MiB is 32,768 pages of 4 KiB
        pytest.skip(f"this C library or kernel already reuses the pages ({default[-3:]} faults a step)")


def test_large_tensors_reuse_their_pages_once_kept(faulting):
    kept = _faults("keep")
    # The heap grows for the first few steps, then every step reuses it.
    assert max(kept[-3:]) < 1_000, kept


def test_sampling_keeps_large_tensors(faulting):
    """The sampler sets it: its row drops copy the KV cache into fresh MiB-sized tensors."""
    after_sampling = _faults("sample")
    assert max(after_sampling[-3:]) < 1_000, after_sampling
