"""Grade TinyGSM-format programs three ways, measured in the same run, and print programs/s:
the sandbox pool, one fresh `python` subprocess per program, and unsandboxed in-process `exec`.

    python benchmarks/bench_sandbox.py                    # 2,000 programs, 2 workers
    python benchmarks/bench_sandbox.py --n 500 --subprocess-n 100

Every program's value is checked against its known answer. The load average is printed before and
after: on a shared machine the numbers only compare within one run.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from echochamber.verify.sandbox import ExecJob, SandboxPool

ENTRY = "simple_math_problem"


def make_programs(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """TinyGSM-style programs (three shapes, as GPT-3.5 wrote them) with their answers."""
    rng = random.Random(seed)
    programs = []
    for i in range(n):
        a, b, c = rng.randint(2, 90), rng.randint(2, 12), rng.randint(1, 9)
        shape = i % 3
        if shape == 0:
            question, steps, answer = (f"Ann has {a} stickers and buys {b} packs of {c}. How many now?",
                                       [f"stickers = {a}", f"packs = {b}", f"per_pack = {c}",
                                        "result = stickers + packs * per_pack"], a + b * c)
        elif shape == 1:
            question, steps, answer = (f"A farm has {a * b} eggs packed in boxes of {b}; {c} boxes break.",
                                       [f"eggs = {a * b}", f"box_size = {b}", "boxes = eggs // box_size",
                                        f"broken = {c}", "result = boxes - broken"], a - c)
        else:
            question, steps, answer = (f"A car goes {a} km/h for {b} hours, then {c} km more. Total?",
                                       [f"speed = {a}", f"hours = {b}", f"extra = {c}", "distance = speed * hours",
                                        "total = distance + extra", "result = total"], a * b + c)
        body = "\n".join(f"    {step}" for step in steps)
        programs.append((f'def {ENTRY}() -> int:\n    """\n    {question}\n    """\n{body}\n    return result\n',
                         answer))
    return programs


def timed(grade: Callable[[list[str]], list[str | None]], codes: list[str]) -> tuple[float, list[str | None]]:
    start = time.perf_counter()
    values = grade(codes)
    return time.perf_counter() - start, values


def grade_in_process(codes: list[str]) -> list[str | None]:
    values: list[str | None] = []
    for code in codes:
        namespace: dict[str, object] = {}
        exec(code, namespace)  # the unsafe baseline: what the paper's code does
        values.append(str(namespace[ENTRY]()))
    return values


def grade_by_subprocess(workers: int) -> Callable[[list[str]], list[str | None]]:
    def one(code: str) -> str | None:
        done = subprocess.run([sys.executable, "-c", f"{code}\nprint({ENTRY}())"], capture_output=True,
                              text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else None

    def grade(codes: list[str]) -> list[str | None]:
        with ThreadPoolExecutor(workers) as executor:
            return list(executor.map(one, codes))

    return grade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="programs graded by the sandbox and by exec")
    parser.add_argument("--subprocess-n", type=int, default=300, help="programs for the subprocess baseline "
                        "(a fresh interpreter each: slow, and its rate is steady long before 2,000)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers = subprocess threads")
    args = parser.parse_args()
    programs = make_programs(args.n)
    codes, answers = [code for code, _ in programs], [str(answer) for _, answer in programs]
    load_before = os.getloadavg()[0]

    start, cpu_before = time.perf_counter(), os.times()
    with SandboxPool(workers=args.workers) as pool:
        startup = time.perf_counter() - start
        pool.run([ExecJob(code, ENTRY) for code in codes[:20]])  # warm-up: first forks fault pages in
        sandbox_s, results = timed(lambda cs: [r.value for r in pool.run([ExecJob(c, ENTRY) for c in cs])], codes)
        stats = pool.stats
    cpu_after = os.times()  # workers are reaped at close, so their CPU (and their children's) is in
    sandbox_cpu = sum(cpu_after[:4]) - sum(cpu_before[:4])  # user, system, children user, children system
    n_sub = min(args.subprocess_n, args.n)
    subprocess_s, sub_values = timed(grade_by_subprocess(args.workers), codes[:n_sub])
    exec_s, exec_values = timed(grade_in_process, codes)

    print(f"{'method':38s} {'programs':>8s} {'seconds':>8s} {'programs/s':>11s} {'correct':>8s}")
    for name, seconds, values, expected in (
            (f"sandbox ({args.workers} workers)", sandbox_s, results, answers),
            (f"fresh python subprocess ({args.workers} threads)", subprocess_s, sub_values, answers[:n_sub]),
            ("in-process exec (unsandboxed)", exec_s, exec_values, answers)):
        correct = sum(v == a for v, a in zip(values, expected, strict=True))
        print(f"{name:38s} {len(values):8d} {seconds:8.2f} {len(values) / seconds:11.1f} {correct:8d}")
    print(f"sandbox CPU {sandbox_cpu / args.n * 1e3:.2f} ms per program, all processes, startup included "
          f"(load-independent; {os.cpu_count()} idle cores would allow ~{os.cpu_count() * args.n / sandbox_cpu:.0f}/s)")
    print(f"sandbox startup {startup:.2f} s; isolation: network_namespace={stats.get('network_namespace')} "
          f"landlock_abi={stats.get('landlock_abi')} child_uid={stats.get('child_uid')}; "
          f"cores {os.cpu_count()}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
