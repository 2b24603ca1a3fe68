"""Mixture spec -> shards: exact counts, held-out docs, prefix property, determinism, bad input."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers import AutoTokenizer

from echochamber.config import from_dict, load_config
from echochamber.data import mixture
from echochamber.data.adapters import SOURCES
from echochamber.data.mixture import (
    MIXTURE_PRESETS,
    MixtureConfig,
    build_from_spec,
    build_shards,
    mixture_preset,
    spec_hash,
)
from echochamber.data.shards import describe_manifest, open_shards
from echochamber.data.tokenizer import PROMPT_SEPARATOR, encode_prompt, tokenizer_hash
from echochamber.data.world import WorldConfig, world_records
from echochamber.errors import UserError

SMALL_WORLD = {"n_pretrain": 300, "n_rl": 5, "n_test": 5, "n_hard": 5, "seed": 3}
BUDGET = 9000


def spec(**changes) -> dict:
    base = {
        "seed": 7,
        "world": SMALL_WORLD,
        "tokenizer": {"vocab_size": 400},
        "val_docs": 10,
        "workers": 1,
        "sources": [
            {"world": "tinygsm", "repeat": 2},
            {"world": "omi1", "repeat": 0.5, "subset": 0.5},
            {"world": "omi2", "tokens": BUDGET},
        ],
    }
    return {**base, **changes}


def build(tmp_path: Path, name: str, **changes) -> tuple[Path, dict]:
    out = tmp_path / name
    return out, build_shards(from_dict(MixtureConfig, spec(**changes)), out, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    return build(tmp_path_factory.mktemp("mixture"), "shards")


def split_documents(stream: np.ndarray, eos: int) -> list[list[int]]:
    ends = np.flatnonzero(stream == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [stream[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


def test_manifest_counts_are_exact(built) -> None:
    out, manifest = built
    shards = open_shards(out)
    assert shards.manifest == manifest
    sources = manifest["sources"]
    assert list(sources) == ["tinygsm", "omi1", "omi2"]
    pool = SMALL_WORLD["n_pretrain"] - 10  # minus the held-out documents
    assert sources["tinygsm"]["unique_documents"] == pool
    assert sources["tinygsm"]["documents"] == 2 * pool
    assert sources["tinygsm"]["repeat"] == 2.0
    assert sources["omi1"]["unique_documents"] == pool // 2
    assert sources["omi1"]["documents"] == round(0.5 * (pool // 2))
    # A token budget: never exceeded, and filled up to less than one more document.
    assert BUDGET - 300 < sources["omi2"]["tokens"] <= BUDGET
    assert sources["omi2"]["token_budget"] == BUDGET
    assert manifest["train_tokens"] == sum(s["tokens"] for s in sources.values()) == len(shards.train)
    assert manifest["train_documents"] == sum(s["documents"] for s in sources.values())
    assert int((shards.train == manifest["eos_token_id"]).sum()) == manifest["train_documents"]
    assert shards.train[-1] == manifest["eos_token_id"]
    for name, source in sources.items():
        assert source["val_documents"] == 10
        assert int((shards.val[name] == manifest["eos_token_id"]).sum()) == 10
        assert len(shards.val[name]) == source["val_tokens"]
    assert manifest["dtype"] == "uint16" and shards.train.dtype == np.uint16
    assert manifest["vocab_size"] == 400
    assert sum(s["token_share"] for s in sources.values()) == pytest.approx(1.0, abs=1e-5)
    assert "omi2:" in describe_manifest(manifest)


def test_shards_hold_exactly_the_declared_documents(built) -> None:
    out, manifest = built
    shards = open_shards(out)
    tokenizer = AutoTokenizer.from_pretrained(str(shards.tokenizer_path))
    assert tokenizer_hash(shards.tokenizer_path) == manifest["tokenizer_hash"]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        manifest["eos_token_id"],
        manifest["pad_token_id"],
    )
    world = WorldConfig(**SMALL_WORLD)
    texts = {
        style: {
            r.prompt + PROMPT_SEPARATOR + r.solution: r.prompt
            for r in world_records(world, "pretrain", style)
        }
        for style in ("tinygsm", "omi1", "omi2")
    }
    eos = manifest["eos_token_id"]
    counts: Counter[str] = Counter()
    trained_prompts = set()
    for doc in split_documents(np.asarray(shards.train), eos):
        text = tokenizer.decode(doc)
        style = next(s for s, docs in texts.items() if text in docs)
        counts[style] += 1
        prompt = texts[style][text]
        trained_prompts.add(prompt)
        # The sampler's prompt encoding is exactly the start of the trained document.
        assert doc[: len(encode_prompt(tokenizer, prompt))] == encode_prompt(tokenizer, prompt)
    assert counts == {name: s["documents"] for name, s in manifest["sources"].items()}
    held_out = set()
    for style in texts:
        for doc in split_documents(np.asarray(shards.val[style]), eos):
            held_out.add(texts[style][tokenizer.decode(doc)])
    # The same problems are held out of every format, and none of them is trained in any format.
    assert len(held_out) == 10
    assert not held_out & trained_prompts


def test_same_spec_gives_byte_identical_shards(built, tmp_path, monkeypatch) -> None:
    out, manifest = built  # tokenized in this process (small mixture)
    # The multi-process path, forced on this small mixture, gives the same bytes.
    in_workers = []
    original = mixture.encode_to_file_in_workers
    monkeypatch.setattr(mixture, "_IN_PROCESS_MAX_DOCS", 0)
    monkeypatch.setattr(
        mixture, "encode_to_file_in_workers", lambda *args: in_workers.append(args[3]) or original(*args)
    )
    again, manifest_again = build(tmp_path, "again", workers=2)
    assert in_workers == [2]
    assert manifest_again == manifest
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert {"train.bin", "manifest.json", "val/omi1.bin", "tokenizer/tokenizer.json"} <= {
        f.as_posix() for f in files
    }
    for file in files:
        assert (out / file).read_bytes() == (again / file).read_bytes(), file
    _, other_seed = build(tmp_path, "other", seed=8)
    assert other_seed["spec_hash"] != manifest["spec_hash"]
    assert (tmp_path / "other" / "train.bin").read_bytes() != (out / "train.bin").read_bytes()


def test_world_mixture_imports_neither_datasets_nor_torch(tmp_path) -> None:
    # Those imports alone took ~3.5 s of what should be a few-second build on a laptop.
    overrides = [f"world.{k}={v}" for k, v in SMALL_WORLD.items()] + ["tokenizer.vocab_size=300"]
    code = (
        "import sys; from pathlib import Path; from echochamber.data.mixture import build_from_spec; "
        f"build_from_spec('tinygsm+omi1', Path(sys.argv[1]), {overrides!r}, progress=False); "
        "print(sorted(m for m in ('datasets', 'torch', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "m" / "manifest.json").is_file()


def test_existing_output_is_reused_or_refused(built, tmp_path) -> None:
    out, manifest = built
    before = (out / "train.bin").stat().st_mtime_ns
    assert build_shards(from_dict(MixtureConfig, spec()), out, progress=False) == manifest
    assert (out / "train.bin").stat().st_mtime_ns == before
    with pytest.raises(UserError, match="already exists"):
        build_shards(from_dict(MixtureConfig, spec(seed=99)), out, progress=False)


def test_presets_mirror_the_papers_mixtures() -> None:
    papers = {
        "tinygsm", "2xtinygsm", "4xtinygsm", "8xtinygsm",
        "tinygsm+omi1", "tinygsm+2xomi1", "tinygsm+4xomi1", "tinygsm+8xomi1",
        "tinygsm+omi2", "tinygsm+omi1+omi2", "omi2",
    }  # fmt: skip
    world = {name for name in MIXTURE_PRESETS if not name.startswith("real-")}
    assert world == papers | {"tinygsm+omi1+omi2-even"}  # the quickstart's
    even = load_config(MixtureConfig, None, base=mixture_preset("tinygsm+omi1+omi2-even"))
    assert {s.label: s.subset for s in even.sources} == {"tinygsm": 0.6, "omi1": 0.4, "omi2": 1.0}
    for name in papers:
        config = load_config(MixtureConfig, None, base=mixture_preset(name))
        repeats = {s.label: s.repeat or 1 for s in config.sources}
        expected = {}
        for part in name.split("+"):
            k, _, style = part.rpartition("x")
            expected[style] = int(k) if k else 1
        assert repeats == expected, name


def test_real_presets_are_the_papers_mixtures_on_the_hub_datasets() -> None:
    """real-NAME: FineMath-3+ and Algebraic-Stack, then NAME's datasets with their repeats, each read
    from its adapter's own hub id (so the adapter's hub config applies), with Llama-2's tokenizer."""
    real = sorted(name for name in MIXTURE_PRESETS if name.startswith("real-"))
    assert len(real) == 11 and "real-omi2+metamathqa" in real
    for name in real:
        config = load_config(MixtureConfig, None, base=mixture_preset(name))
        assert config.tokenizer.path == "meta-llama/Llama-2-7b-hf", name
        assert [s.label for s in config.sources[:2]] == ["finemath", "algebraic-stack"], name
        assert all(s.hub == SOURCES[s.dataset].hub_id for s in config.sources), name
        rest = "+".join(f"{s.repeat:g}x{s.label}" if s.repeat else s.label for s in config.sources[2:])
        assert rest == name.removeprefix("real-"), name


def test_preset_builds_through_the_cli_function(tmp_path) -> None:
    overrides = [f"world.{k}={v}" for k, v in SMALL_WORLD.items()] + [
        "tokenizer.vocab_size=300",
        "val_docs=4",
    ]
    manifest = build_from_spec("tinygsm+4xomi1", tmp_path / "p", overrides, progress=False)
    omi1 = manifest["sources"]["omi1"]
    assert omi1["documents"] == 4 * omi1["unique_documents"]
    spec_file = tmp_path / "mix.yaml"
    spec_file.write_text(yaml.safe_dump(spec(sources=[{"dataset": "gsm8k", "path": "x"}, {"world": "omi2"}])))
    with pytest.raises(UserError, match="does not exist"):
        build_from_spec(str(spec_file), tmp_path / "q", progress=False)
    assert not (tmp_path / "q").exists()


def test_dataset_source_from_a_real_file(shared_data, tmp_path) -> None:
    sources = [
        {"dataset": "gsm8k", "path": str(shared_data / "gsm8k" / "train.jsonl"), "limit": 120, "repeat": 3},
        {"world": "tinygsm"},
    ]
    _, manifest = build(tmp_path, "real", sources=sources)
    gsm8k = manifest["sources"]["gsm8k"]
    assert gsm8k["kind"] == "dataset:gsm8k"
    assert (gsm8k["unique_documents"], gsm8k["documents"], gsm8k["val_documents"]) == (110, 330, 10)


def test_paths_point_every_source_of_a_dataset_at_a_local_copy(fixtures_dir, tmp_path) -> None:
    """`paths` wins over a source's hub id (the hub is never asked), lists datasets the mixture may not
    use, and leaves the data's hash as it was when empty."""
    hub = {"sources": [{"dataset": "tinygsm", "hub": "TinyGSM/TinyGSM"}, {"world": "omi2"}], "val_docs": 1}
    local = {**hub, "paths": {"tinygsm": str(fixtures_dir / "sources" / "tinygsm.jsonl"), "omi1": "/not/used"}}
    config = from_dict(MixtureConfig, spec(**local))
    assert config.location(config.sources[0]) == (local["paths"]["tinygsm"], None)
    assert from_dict(MixtureConfig, spec(**hub)).location(config.sources[0]) == (None, "TinyGSM/TinyGSM")
    manifest = build_shards(config, tmp_path / "local", progress=False)
    assert manifest["sources"]["tinygsm"]["unique_documents"] == 2  # 3 rows, 1 held out
    assert spec_hash(from_dict(MixtureConfig, spec())) == spec_hash(from_dict(MixtureConfig, spec(paths={})))
    assert spec_hash(config) != spec_hash(from_dict(MixtureConfig, spec(**hub)))
    with pytest.raises(UserError, match="mixture.paths: unknown dataset 'tinygms'"):
        from_dict(MixtureConfig, spec(paths={"tinygms": "/x"}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sources": []}, "at least one source"),
        ({"sources": [{"world": "tinygsm", "repeat": 1, "tokens": 5}]}, "not both"),
        ({"sources": [{"world": "tinygsm"}, {"world": "tinygsm"}]}, "two mixture sources are named"),
        ({"sources": [{"world": "tinygsm", "dataset": "gsm8k"}]}, "exactly one of"),
        ({"sources": [{"world": "tinygsm", "subset": 0}]}, "subset"),
        ({"sources": [{"world": "tinygsm", "name": "../x"}]}, "names a file"),
        ({"sources": [{"world": "latex"}]}, "unknown world format 'latex'"),
    ],
)
def test_bad_specs_are_one_line_errors(changes, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        from_dict(MixtureConfig, spec(**changes))
    assert "\n" not in str(info.value)


def test_a_source_with_zero_tokens_leaves_nothing_behind(tmp_path) -> None:
    with pytest.raises(UserError, match="contributes no documents"):
        build(tmp_path, "empty", sources=[{"world": "tinygsm", "tokens": 3}])
    assert list(tmp_path.iterdir()) == []  # no output folder, no staging folder


def test_unknown_preset_and_unwritable_output(tmp_path) -> None:
    with pytest.raises(UserError, match="neither a mixture file nor a preset"):
        build_from_spec("tinygsm+16xomi1", tmp_path / "x")
    with pytest.raises(UserError, match="unknown mixture preset"):
        mixture_preset("nope")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        build(tmp_path, "file/shards")
