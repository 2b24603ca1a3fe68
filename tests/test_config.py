from dataclasses import dataclass, field
from typing import Literal

import pytest

from echochamber.config import config_hash, load_config
from echochamber.errors import UserError


@dataclass
class Inner:
    lr: float = 1e-3
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_yaml_and_overrides_resolve(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\ninner:\n  lr: 1\n")
    cfg = load_config(Outer, path, ["inner.kind=b", "tags=[p, q]"])
    assert cfg.steps == 3 and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.kind == "b" and cfg.tags == ["p", "q"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["inner.lrr=1"], "unknown config key 'inner.lrr'"),
        (["steps=ten"], "config key 'steps': expected an integer"),
        (["inner.kind=c"], "config key 'inner.kind': must be one of"),
        (["steps=1.5"], "config key 'steps': expected an integer"),
        (["inner=3"], "config key 'inner': expected a mapping"),
        (["inner.lr=fast"], "config key 'inner.lr': expected a number"),
    ],
)
def test_bad_keys_and_types_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_config(Outer, None, overrides)


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 reads `5e-5` as a string; on the command line it means the number.
    assert load_config(Outer, None, ["inner.lr=5e-5"]).inner.lr == 5e-5
    assert load_config(Outer, None, ["inner.lr=-2E3"]).inner.lr == -2000.0


def test_invalid_yaml_is_one_line_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Outer, path)


def test_hash_changes_with_content():
    assert config_hash(Outer()) == config_hash(Outer())
    assert config_hash(Outer()) != config_hash(Outer(steps=11))
