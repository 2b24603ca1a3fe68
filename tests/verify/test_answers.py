"""math-verify equivalences and the worker pool's time bounds."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from echochamber.verify.answers import Comparison, MathVerifyPool, compare
from echochamber.verify.normalize import normalize_gold


@pytest.mark.parametrize(
    ("gold", "prediction", "mode"),
    [
        ("1/2", "So the answer is \\boxed{0.5}.", "text"),
        ("0.5", "So the answer is \\boxed{\\frac{1}{2}}.", "text"),
        ("\\frac{14}{3}", "We get \\boxed{\\dfrac{14}{3}}", "text"),
        ("1000", "She saves \\boxed{1,000} dollars.", "text"),
        ("18", "She pays \\boxed{\\$18}.", "text"),
        ("18", "She makes 9 * 2 = $18 every day.", "text"),  # final number of plain text
        ("6", "Add the fee to the answer from the previous step: 4 + 2 = 6\n#### 6", "text"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "The point is \\boxed{(3, \\frac{\\pi}{2})}.", "text"),
        ("13", "13", "value"),
        ("13", "13.0", "value"),
        ("0.3", "0.30000000000000004", "value"),
        ("1/3", "1/3", "value"),  # str(Fraction(1, 3))
        ("0.00001", "1e-05", "value"),
        ("18", "18.000000000000004", "value"),  # 0.1 * 3 * 60: float noise, not a wrong answer
        ("3.3", "3.3000000000000003", "value"),
        ("0.0000001", "1.0000000000000002e-07", "value"),
    ],
)
def test_equivalent_answers_are_correct(gold, prediction, mode):
    verdict = compare(Comparison(normalize_gold(gold), prediction, mode))
    assert (verdict.status, verdict.correct) == ("ok", True), verdict


@pytest.mark.parametrize(
    ("gold", "prediction", "mode"),
    [
        ("18", "She pays \\boxed{19}.", "text"),
        ("1000", "She saves \\boxed{100}.", "text"),
        ("0.5", "\\boxed{\\frac{1}{3}}", "text"),
        ("13", "14", "value"),
        ("18", "18.0000004", "value"),  # not float noise: math-verify never rounds against an integer
        ("18", "18.0000000000001", "value"),  # 15 significant digits: a float holds them exactly
    ],
)
def test_different_answers_are_wrong_but_ok(gold, prediction, mode):
    verdict = compare(Comparison(gold, prediction, mode))
    assert (verdict.status, verdict.correct) == ("ok", False)


def test_missing_and_unusable_answers_have_their_own_status():
    assert compare(Comparison("7", "I do not know.", "text")).status == "no_answer"
    assert compare(Comparison("7", "True", "value")).status == "no_answer"
    assert compare(Comparison("", "\\boxed{7}", "text")).status == "bad_gold"
    assert compare(Comparison("7", "\\boxed{\\frac{}{}}", "text")).status == "parse_error"


def test_gold_readable_only_as_text_still_matches_the_same_text():
    # An OMI-2 sample's gold; math-verify cannot read a chained equation as maths.
    assert compare(Comparison("r = R = s", "so \\boxed{r = R = s}", "text")).correct
    verdict = compare(Comparison("r = R = s", "so \\boxed{r = s}", "text"))
    assert (verdict.status, verdict.correct) == ("bad_gold", False)


@pytest.fixture(scope="module")
def pool():
    with MathVerifyPool(workers=2, timeout_s=1.0) as pool:
        yield pool


def test_pool_keeps_order(pool):
    comparisons = [Comparison(str(n), f"so the total is \\boxed{{{n}}}", "text") for n in range(40)]
    comparisons[7] = Comparison("7", "so the total is \\boxed{8}", "text")
    verdicts = pool.compare(comparisons)
    assert [verdict.answer for verdict in verdicts] == [str(n) if n != 7 else "8" for n in range(40)]
    assert [verdict.correct for verdict in verdicts] == [n != 7 for n in range(40)]


def test_pool_works_off_the_main_thread(pool):
    """math-verify's own SIGALRM timeouts fail off the main thread; ours must not."""
    results = []
    thread = threading.Thread(
        target=lambda: results.append(pool.compare([Comparison("0.5", "\\boxed{1/2}", "text")]))
    )
    thread.start()
    thread.join(timeout=30)
    assert results and results[0][0].correct


def test_pathological_expression_times_out_in_bounded_time(pool):
    start = time.monotonic()
    verdicts = pool.compare(
        [Comparison("5", "\\boxed{9^{9^{9^{9}}}}", "text"), Comparison("5", "\\boxed{5}", "text")]
    )
    assert time.monotonic() - start < 8.0
    assert verdicts[0].status == "timeout" and not verdicts[0].correct
    assert verdicts[1].correct


def test_unresponsive_worker_is_killed_and_replaced(pool):
    # A stopped process ignores its timer just like one stuck inside a long C call.
    os.kill(pool._workers[0].process.pid, signal.SIGSTOP)
    os.kill(pool._workers[1].process.pid, signal.SIGSTOP)
    start = time.monotonic()
    verdicts = pool.compare([Comparison("5", "5", "value")] * 3)
    assert time.monotonic() - start < 15.0
    assert [verdict.status for verdict in verdicts] == ["timeout", "timeout", "ok"]
    assert "killed" in verdicts[0].detail


def test_worker_that_died_while_idle_is_replaced(pool):
    os.kill(pool._workers[0].process.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert [verdict.correct for verdict in pool.compare([Comparison("5", "5", "value")] * 4)] == [True] * 4
