"""The one command line: a UserError is one line and exit code 2, and `python -m echochamber` is it too."""

import subprocess
import sys

import pytest

from echochamber.cli import build_parser, main


def test_cli_turns_user_error_into_exit_2(tmp_path, capsys):
    bad = tmp_path / "w.yaml"
    bad.write_text("no_such_key: 1\n")
    code = main(["data", "world", "--out", str(tmp_path / "o"), "--config", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "no_such_key" in err


def test_python_dash_m_is_the_same_command():
    # `python -m echochamber` works where the console script is not installed (PYTHONPATH checkouts).
    done = subprocess.run(
        [sys.executable, "-m", "echochamber", "data", "world", "--out", "/nonexistent/x", "--set", "n_rl=-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "n_rl" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [["data", "world", "--out", "o"], ["data", "mixture", "preset", "--out", "o"], ["grade", "in.jsonl"],
     ["trace", "run", "in.jsonl"], ["pretrain", "c.yaml"], ["rl", "cpu", "--algo", "grpo"], ["eval", "ckpt"],
     ["report", "run"], ["run"], ["sweep", "paper-cpu"]],
    ids=lambda argv: " ".join(argv[:2]),
)  # fmt: skip
def test_every_subcommand_parses(argv: list[str]) -> None:
    assert callable(build_parser().parse_args(argv).func)


def test_rl_offers_every_algorithm_of_the_rl_config() -> None:
    """The CLI lists the algorithms literally (importing the RL config would pull torch into --help)."""
    from echochamber.rl.config import ALGORITHMS

    for algo in ALGORITHMS:
        assert build_parser().parse_args(["rl", "cpu", "--algo", algo]).algo == algo


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path):
    """A misspelt key is one line and exit 2 from `run`, `rl`, `pretrain`, `eval` and `sweep` without
    importing torch or transformers, which take ~8 s on a 2-core CPU: the config modules hold plain
    data and the commands import their training code only after the config has loaded."""
    configs = {
        "run.yaml": "algo: grpo\nrl:\n  max_stepz: 3\n",
        "rl.yaml": "grpo:\n  lrr: 1\n",
        "pretrain.yaml": "modell: tiny\n",
        "eval.yaml": "nn: 3\n",
        "sweep.yaml": "name: s\nbase: quickstart\naxess: {}\n",
    }
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    commands = [
        ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out")],
        ["rl", str(tmp_path / "rl.yaml"), "--algo", "grpo"],
        ["pretrain", str(tmp_path / "pretrain.yaml")],
        ["eval", str(tmp_path / "model"), "--config", str(tmp_path / "eval.yaml")],
        ["sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "sweep")],
    ]
    code = (
        "import sys; from echochamber.cli import main; "
        f"codes = [main(argv) for argv in {commands!r}]; "
        "print(codes, sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[2, 2, 2, 2, 2] []", done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 5 and all(line.startswith("echochamber: error: unknown config key") for line in errors)
    keys = ("max_stepz", "lrr", "modell", "nn", "axess")
    assert [key in line for key, line in zip(keys, errors, strict=True)] == [True] * 5
