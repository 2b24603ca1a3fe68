"""The run log (metrics.jsonl): one line per logged step, truncation on resume that touches only its
stage, and the one JSON-lines reader."""

from __future__ import annotations

import json

import pytest

from echochamber.errors import UserError
from echochamber.runlog import MetricsWriter, iter_jsonl, read_jsonl, read_metrics, truncate_metrics


def test_writer_logs_stage_and_step_and_survives_non_finite_values(tmp_path):
    with MetricsWriter(tmp_path, "pretrain", tensorboard=True) as writer:
        writer.log(1, {"loss": 2.5, "lr": 1e-3})
        writer.log(2, {"loss": float("nan"), "note": "diverged"})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [
        {"stage": "pretrain", "step": 1, "loss": 2.5, "lr": 1e-3},
        {"stage": "pretrain", "step": 2, "loss": "nan", "note": "diverged"},
    ]
    assert list((tmp_path / "tb" / "pretrain").glob("events.out.tfevents.*"))


def test_resume_truncates_only_this_stage_beyond_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"stage": "pretrain", "step": s, "loss": float(s)} for s in range(1, 6)]
    lines.insert(2, {"stage": "eval", "step": 40})
    path.write_text("".join(json.dumps(row) + "\n" for row in lines) + '{"stage": "pretrain", "st')
    with MetricsWriter(tmp_path, "pretrain", tensorboard=False, resume_step=3) as writer:
        writer.log(4, {"loss": 40.0})
    rows = read_metrics(path)
    assert [(row["stage"], row["step"]) for row in rows] == [
        ("pretrain", 1), ("pretrain", 2), ("eval", 40), ("pretrain", 3), ("pretrain", 4),
    ]  # fmt: skip
    assert rows[-1]["loss"] == 40.0
    assert truncate_metrics(path, "pretrain", 10) == 0
    assert read_metrics(path, stage="eval") == [{"stage": "eval", "step": 40}]


def test_a_corrupt_line_in_the_middle_is_an_error_not_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "pretrain", "step": 1}\nnot json\n{"stage": "pretrain", "step": 2}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        read_metrics(path)
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        truncate_metrics(path, "pretrain", 0)


def test_the_reader_skips_only_a_torn_last_line_and_refuses_non_objects(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')
    torn = []
    assert list(iter_jsonl(path, lambda: torn.append(True))) == [{"a": 1}, {"a": 2}]
    assert torn == [True]
    assert read_jsonl(path) == ([{"a": 1}, {"a": 2}], True)
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert read_jsonl(path) == ([{"a": 1}, {"a": 2}], False)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 is not a JSON object"):
        read_jsonl(path)


def test_wandb_requested_without_wandb_installed_is_a_user_error(tmp_path):
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="wandb is not installed"):
            MetricsWriter(tmp_path, "pretrain", tensorboard=False, wandb_project="echo")
    else:
        pytest.skip("wandb is installed here")
