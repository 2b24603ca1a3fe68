"""A study stage's hash: its own resolved config plus the hashes of the stages it reads.

Changing an RL key re-runs RL, the final evaluation and the report, never pretraining; keys that
change how a stage reports, checkpoints or batches its work are left out (`NOT_HASHED`). Keys added
to a config after run folders existed are left out at the value that reproduces the behaviour from
before them (`LATER_KEYS`), so adding a feature never makes every finished run folder stale: only a
run that sets such a key to something else hashes it. A study that starts from a `pretrained`
checkpoint hashes the checkpoint (`checkpoint_identity`) in place of the mixture and pretraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from echochamber.config import config_hash, to_dict
from echochamber.data.mixture import spec_hash
from echochamber.rl.config import ALGORITHMS
from echochamber.study.config import StudyConfig

# Keys that change how a stage reports, checkpoints or batches its work, never what it computes.
# reference_pass only adds the KL-to-reference metrics of a KL-0 run; its training is the same.
NOT_HASHED = (
    "progress", "tensorboard", "wandb_project", "checkpoint_every", "keep_checkpoints", "micro_batch_size",
    "reference_pass",
)
# (section path, key) -> the value at which a key added later changes nothing.
LATER_KEYS: dict[tuple[tuple[str, ...], str], Any] = {
    (("pretrain",), "epochs"): None,
    (("eval",), "over_context"): "error",
    (("rl", "eval"), "over_context"): "error",
    (("rl", "prompts"), "over_context"): "error",
    (("rl", "rollout"), "backend"): "torch",
    (("rl",), "dtype"): "float32",
}


def stage_hashes(study: StudyConfig) -> dict[str, str]:
    """Each stage's hash: its own config plus the hashes of the stages it reads."""
    settings = _settings(study)
    if study.pretrained is not None:  # the checkpoint is the data and the pretraining
        data = config_hash({"pretrained": checkpoint_identity(study.pretrained)})
        pretrain = config_hash({"after": data})
    else:
        data = spec_hash(study.mixture)  # the mixture decides what counts (its worker count does not)
        pretrain = config_hash({"after": data, "pretrain": settings["pretrain"]})
    rl = config_hash({"after": pretrain, "algo": study.algo, "rl": settings["rl"]})
    base = config_hash({"after": pretrain, "eval": settings["eval"]})
    final = config_hash({"after": rl, "eval": settings["eval"]})
    report = config_hash({"after": [base, final]})
    return {"data": data, "pretrain": pretrain, "eval-base": base, "rl": rl, "eval-final": final, "report": report}


def _settings(study: StudyConfig) -> dict[str, dict[str, Any]]:
    """The hashed part of the pretrain, rl and eval sections."""
    rl = _without(to_dict(study.rl), NOT_HASHED)
    for algo in ALGORITHMS:  # only the chosen algorithm's section matters
        if algo != study.algo:
            rl.pop(algo)
    for section, key in (("rollout", "grader_workers"), ("rollout", "batch_size"), ("eval", "batch_size"), ("eval", "workers")):
        rl[section].pop(key)
    # The vLLM engine's settings matter only to that backend, and its memory share to none.
    engine = rl["rollout"].pop("vllm")
    if rl["rollout"]["backend"] == "vllm":
        rl["rollout"]["vllm"] = {key: value for key, value in engine.items() if key != "memory"}
    settings = {
        "pretrain": _without(to_dict(study.pretrain), NOT_HASHED),
        "rl": rl,
        # The formats decide every label and some answers: the evaluations read them from the study.
        "eval": {**_without(to_dict(study.eval), ("workers", "batch_size")), "formats": to_dict(study)["formats"]},
    }
    for (path, key), unchanged in LATER_KEYS.items():
        section = settings[path[0]]
        for part in path[1:]:
            section = section[part]
        if section.get(key, unchanged) == unchanged:
            section.pop(key, None)
    return settings


def checkpoint_identity(folder: str) -> dict[str, Any]:
    """A pretrained checkpoint as hashed: its absolute path and the name and size of each file in
    it (cheap, and a checkpoint replaced in place almost always changes a size)."""
    path = Path(folder).resolve()
    files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    return {"path": str(path), "files": files}


def _without(settings: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in keys}
