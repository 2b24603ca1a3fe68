"""The model stage: the paper's decoder presets (presets.py), and the one way to generate text from
any causal LM (sampler.py over decoders.py's KV-cache forward; sampler_vllm.py on GPUs)."""
