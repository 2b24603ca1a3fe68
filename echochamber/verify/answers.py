"""Gold-answer normalisation and math-verify comparison in worker processes.

math-verify bounds its own work with SIGALRM, which only works on a process's main thread: called
from a worker thread it either raises or, with its timeouts switched off, can hang forever (verl
saw every MATH reward become 0 that way). So every parse and comparison here runs in a small pool
of worker processes, each serving requests on its main thread under its own interval timer, and
the parent kills and replaces a worker that overruns a hard deadline (a long C-level computation,
e.g. a huge integer power, cannot be interrupted by a signal). Callers may sit on any thread.

Every outcome carries a status, so nothing is silently scored 0: `ok` (compared; `correct` says
how it went), `no_answer`, `parse_error`, `bad_gold`, `verify_error`, `timeout`, `killed`.

What math-verify 0.9 (with sympy 1.14) holds equal, measured rather than assumed (tests pin it):
a float and a fraction or irrational number are equal when both round to the same 6 decimals
(0.333333 = 1/3, 1.414214 = sqrt(2)); a float and an integer only when exactly equal (18.0 = 18,
but 18.0000004 != 18 and 18.000000000000004 != 18: the rounded float stays a Float, which sympy
>= 1.13 never calls equal to an Integer); two integers or two fractions only when exactly equal;
0.5 = 1/2 = \\frac{1}{2}; 50\\% equals both 50 and 0.5; and `verify` is asymmetric for equations
(gold 3, prediction 2x+1=3 is equal; the reverse is not). Program values are therefore rounded to
the digits a float holds (`round_float_noise`) before they are compared, or a TinyGSM function
computing 0.1 * 3 * 60 = 18.000000000000004 would be scored wrong against 18.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import Connection, wait
from pathlib import Path

from echochamber.verify.normalize import round_float_noise

# GSM8K's explicit final-answer line; read before math-verify, whose "answer ... =" anchors would
# otherwise pick a number from a sentence that merely mentions "the answer from the previous step".
_GSM8K_ANSWER_LINE = re.compile(r"^####[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)
# The parent waits this long past the worker's own timer before killing the worker.
_KILL_GRACE_S = 2.0
_STARTUP_TIMEOUT_S = 120.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); from multiprocessing.connection import Connection; "
    "from echochamber.verify.answers import _serve; del sys.path[0]; "
    "_serve(Connection(int(sys.argv[2])), float(sys.argv[3]), int(sys.argv[4]))"
)


@dataclass(frozen=True)
class Comparison:
    """One answer to check. `mode` "text": `prediction` is a completion whose answer math-verify
    extracts (`\\boxed{}`, a GSM8K `#### N` line, else its last number); "value": `prediction` is
    str() of what an executed program returned; "extracted": `prediction` is an answer a format's
    rule already read from the text (formats.rules), read the way golds are; "answer": `gold` and
    `prediction` are two extracted answers (both read the way golds are) and the verdict says
    whether math-verify holds them equal both ways round (majority voting asks this; `verify` alone
    is asymmetric for equations)."""

    gold: str
    prediction: str
    mode: str


@dataclass(frozen=True)
class Verdict:
    """How one Comparison went; `answer` is the answer as math-verify extracted it."""

    status: str
    correct: bool
    answer: str | None
    detail: str = ""


class _Deadline(BaseException):
    """Raised by the worker's timer. A BaseException so math-verify's `except Exception` blocks
    (and its own TimeoutException handler) cannot swallow it."""


def compare(comparison: Comparison) -> Verdict:
    """Parse both sides with math-verify and compare them. No time limit: call it only where a
    runaway is bounded (a MathVerifyPool worker), or on inputs you trust."""
    if comparison.mode == "answer":
        return _same_answer(comparison.gold, comparison.prediction)
    gold = _parse_gold(comparison.gold)
    if not gold:
        return Verdict("bad_gold", False, None, f"math-verify cannot parse gold {comparison.gold[:100]!r}")
    if comparison.mode == "text":
        extracted = _parse_text(comparison.prediction)
    elif comparison.mode == "value":
        extracted = _parse_value(comparison.prediction)
    elif comparison.mode == "extracted":
        extracted = _parse_gold(comparison.prediction)
    else:
        raise ValueError(f"unknown comparison mode {comparison.mode!r}")
    if not extracted:
        return Verdict("no_answer", False, None, "no answer found")
    answer = extracted[-1] if isinstance(extracted[-1], str) else str(extracted[0])
    errors = []
    for gold_item in gold:
        for predicted in extracted:
            try:
                if _verify(gold_item, predicted):
                    return Verdict("ok", True, answer)
            except Exception as exc:  # sympy raises anything; kept as a status, never scored silently
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
    # Unparsed sides were still compared as strings above; a mismatch then proves nothing.
    if isinstance(gold[0], str):
        return Verdict(
            "bad_gold", False, answer, f"math-verify reads gold {comparison.gold[:100]!r} only as text"
        )
    if isinstance(extracted[0], str):
        return Verdict("parse_error", False, answer, "math-verify cannot parse the answer")
    if errors:
        return Verdict("verify_error", False, answer, "; ".join(errors))
    return Verdict("ok", False, answer)


def _same_answer(first: str, second: str) -> Verdict:
    """Whether two extracted answers are one answer: math-verify's `verify` both ways round."""
    parsed = [_parse_gold(first), _parse_gold(second)]
    if not all(parsed):
        return Verdict("no_answer", False, None, "math-verify cannot parse one of the answers")
    try:
        same = _verify(parsed[0], parsed[1]) and _verify(parsed[1], parsed[0])
    except Exception as exc:  # sympy raises anything; the caller counts it as "not shown equal"
        return Verdict("verify_error", False, None, f"{type(exc).__name__}: {str(exc)[:120]}")
    return Verdict("ok", same, None)


def _verify(gold: object, predicted: object) -> bool:
    from math_verify import verify

    return verify(gold, predicted, timeout_seconds=None, raise_on_error=True)


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    # Golds are bare LaTeX ("\\frac{14}{3}", "(3, \\frac{\\pi}{2})"); boxing them lets math-verify
    # read tuples and intervals that it would otherwise cut down to their last number.
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    boxed = parse(f"\\boxed{{{gold}}}", [LatexExtractionConfig()], parsing_timeout=None)
    if boxed and not isinstance(boxed[0], str):
        return boxed
    plain = parse(gold, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)
    if plain and not isinstance(plain[0], str):
        return plain
    return boxed or plain  # text only (or nothing): compare() can still match it as a string


def _parse_text(text: str) -> list:
    from math_verify import parse

    if "\\boxed" not in text:
        answer_lines = _GSM8K_ANSWER_LINE.findall(text)
        if answer_lines:
            text = answer_lines[-1]
    return parse(text, parsing_timeout=None)


def _parse_value(value: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = round_float_noise(value.strip())
    if "e" in text.lower():
        # str(1e-05) would otherwise be read as its digits; Decimal spells it out positionally.
        with contextlib.suppress(InvalidOperation):
            number = Decimal(text)
            if number.is_finite():
                text = format(number, "f")
    return parse(text, [ExprExtractionConfig(), LatexExtractionConfig()], parsing_timeout=None)


def _serve(conn: Connection, timeout_s: float, memory_mb: int) -> None:
    """Worker main loop: one Comparison in, one Verdict out, each under an interval timer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns shutdown
    if memory_mb > 0:
        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": ours is on

    def on_alarm(signum: int, frame: object) -> None:
        raise _Deadline

    signal.signal(signal.SIGALRM, on_alarm)
    import math_verify  # noqa: F401  (pay the import before announcing readiness)

    conn.send("ready")
    while True:
        try:
            comparison = conn.recv()
        except EOFError:
            return
        if comparison is None:
            return
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                verdict = compare(comparison)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Deadline:
            verdict = Verdict("timeout", False, None, f"math-verify took over {timeout_s:g} s")
        except MemoryError:
            verdict = Verdict("verify_error", False, None, f"math-verify exceeded {memory_mb} MB")
        conn.send(verdict)


class _Worker:
    """One `python -c` child serving `_serve` over a socket pair. A fresh interpreter rather than a
    multiprocessing child: forking the caller (which may hold threads) is unsafe, and spawn and
    forkserver re-import the caller's main module, which would demand an `if __name__` guard."""

    def __init__(self, timeout_s: float, memory_mb: int):
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _BOOTSTRAP,
                    _PACKAGE_ROOT,
                    str(theirs.fileno()),
                    repr(timeout_s),
                    str(memory_mb),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the caller, which then closes the pool
            )
        self.conn = Connection(ours.detach())

    def wait_ready(self) -> None:
        if not self.conn.poll(_STARTUP_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"math-verify worker did not start within {_STARTUP_TIMEOUT_S:g} s")
        try:
            message = self.conn.recv()
        except EOFError:
            raise RuntimeError(
                f"math-verify worker died at start (exit code {self.process.wait()})"
            ) from None
        if message != "ready":
            raise RuntimeError(f"math-verify worker sent {message!r} instead of 'ready'")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()


class MathVerifyPool:
    """Worker processes that run `compare`; `compare` here is thread-safe and keeps order.

    `timeout_s` bounds one comparison (parsing both sides included); a worker that does not
    answer `_KILL_GRACE_S` later is killed and replaced. `memory_mb` caps each worker's address
    space so a pathological expression fails alone instead of exhausting the machine.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 4096):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._timeout_s = timeout_s
        self._memory_mb = memory_mb
        self._lock = threading.Lock()
        self._workers = [self._spawn_unready() for _ in range(workers)]
        for worker in self._workers:
            worker.wait_ready()

    def _spawn_unready(self) -> _Worker:
        return _Worker(self._timeout_s, self._memory_mb)

    def _replace(self, index: int) -> None:
        self._workers[index].kill()
        self._workers[index] = self._spawn_unready()
        self._workers[index].wait_ready()

    def compare(self, comparisons: Sequence[Comparison]) -> list[Verdict]:
        with self._lock:
            return self._compare_locked(comparisons)

    def _compare_locked(self, comparisons: Sequence[Comparison]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(comparisons)
        queue = deque(range(len(comparisons)))
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (comparison index, kill time)
        while queue or busy:
            for index in range(len(self._workers)):
                if index not in busy and queue:
                    item = queue.popleft()
                    self._send(index, comparisons[item])
                    busy[index] = (item, time.monotonic() + self._timeout_s + _KILL_GRACE_S)
            next_kill = min(kill_at for _, kill_at in busy.values())
            ready = wait(
                [self._workers[index].conn for index in busy], max(0.0, next_kill - time.monotonic())
            )
            for index in list(busy):
                item, kill_at = busy[index]
                if self._workers[index].conn in ready:
                    del busy[index]
                    try:
                        verdicts[item] = self._workers[index].conn.recv()
                    except EOFError:
                        code = self._workers[index].process.wait()
                        verdicts[item] = Verdict(
                            "killed", False, None, f"math-verify worker died (exit code {code})"
                        )
                        self._replace(index)
                elif time.monotonic() >= kill_at:
                    del busy[index]
                    verdicts[item] = Verdict(
                        "timeout",
                        False,
                        None,
                        f"math-verify worker killed after {self._timeout_s + _KILL_GRACE_S:g} s",
                    )
                    self._replace(index)
        missing = [item for item, verdict in enumerate(verdicts) if verdict is None]
        if missing:
            raise RuntimeError(f"math-verify pool lost comparisons {missing[:5]}")
        return verdicts  # type: ignore[return-value]  (checked complete just above)

    def _send(self, index: int, comparison: Comparison) -> None:
        try:
            self._workers[index].conn.send(comparison)
        except (BrokenPipeError, ConnectionResetError):
            # The worker died while idle (killed from outside); a fresh one takes the request.
            self._replace(index)
            self._workers[index].conn.send(comparison)

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                with contextlib.suppress(
                    BrokenPipeError, ConnectionResetError
                ):  # gone already: kill() reaps it
                    worker.conn.send(None)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(timeout=1.0)
                worker.kill()
            self._workers = []

    def __enter__(self) -> MathVerifyPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
