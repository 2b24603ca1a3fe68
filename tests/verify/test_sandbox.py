"""The sandbox: correct values for normal programs, the right non-ok status for every hostile one,
nothing outside scratch touched, and a pool that survives dead, hung and tampered workers."""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

from echochamber.errors import UserError
from echochamber.verify import confine, sandbox
from echochamber.verify.sandbox import STATUSES, ExecJob, ExecResult, SandboxPool

ENTRY = "simple_math_problem"
TIMEOUT_S = 2.0  # generous: the machine is a shared, loaded 2-core box


def make_tinygsm_programs(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """N TinyGSM-style programs (typed function, docstring, one variable per quantity, `result`) with
    the answer each must return."""
    rng = random.Random(seed)
    programs = []
    for i in range(n):
        apples, price, friends, extra = rng.randint(2, 60), rng.randint(1, 9), rng.randint(1, 5), i % 17
        code = (
            f"def {ENTRY}() -> int:\n"
            f'    """\n'
            f"    Tom buys {apples} apples at ${price} each, then {extra} more for free. He splits the cost\n"
            f"    equally with {friends} friends. How many dollars does each person pay, rounded down?\n"
            f'    """\n'
            f"    apples = {apples}\n"
            f"    price_per_apple = {price}\n"
            f"    free_apples = {extra}\n"
            f"    friends = {friends}\n"
            f"    total_cost = apples * price_per_apple\n"
            f"    people = friends + 1\n"
            f"    result = total_cost // people\n"
            f"    return result\n"
        )
        programs.append((code, apples * price // (friends + 1)))
    return programs


def program(body: str) -> ExecJob:
    """A job whose entry function runs `body`, with os, sys, signal and shutil imported (so: impure)."""
    lines = "\n".join("    " + line for line in body.strip("\n").splitlines())
    return ExecJob(f"import os, sys, signal, shutil\n\ndef {ENTRY}():\n{lines}\n", ENTRY)


def pure(body: str) -> ExecJob:
    """A job with no imports: the kind that may share a process with its neighbours."""
    lines = "\n".join("    " + line for line in body.strip("\n").splitlines())
    return ExecJob(f"def {ENTRY}():\n{lines}\n", ENTRY)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout_s=TIMEOUT_S, cpu_s=1.0, memory_mb=256, max_output_bytes=4096) as pool:
        yield pool


def run_one(pool: SandboxPool, job: ExecJob) -> ExecResult:
    (result,) = pool.run([job])
    return result


def assert_pool_serves(pool: SandboxPool) -> None:
    assert run_one(pool, program("return 6 * 7")) == ExecResult("ok", "42")


def sandbox_workers() -> dict[int, str]:
    """Worker processes of this test process and their scratch dirs, found the way an operator would:
    parent pid and command line."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"_worker_main" in b" ".join(argv):
                workers[int(entry.name)] = json.loads(argv[-2])["scratch"]
    return workers


# ---------------------------------------------------------------- normal programs

def test_tinygsm_programs_return_their_answers(pool):
    programs = make_tinygsm_programs(60)
    results = pool.run([ExecJob(code, ENTRY) for code, _ in programs])
    assert [r.status for r in results] == ["ok"] * 60
    assert [int(r.value) for r in results] == [answer for _, answer in programs]


def test_values_are_str_of_ints_floats_and_fractions(pool):
    jobs = [program("return 12"), program("return 7 / 2"), program("from fractions import Fraction\nreturn Fraction(6, 8)"),
            program("return -0.1 + 0.2")]
    assert [r.value for r in pool.run(jobs)] == ["12", "3.5", "3/4", str(-0.1 + 0.2)]


def test_omi1_block_gives_last_expression_and_keeps_printed_output(pool):
    value, printed, statement = pool.run([
        ExecJob("import math\nside = 4\narea = side ** 2\narea + math.floor(2.5)"),
        ExecJob("total = 3 * 5\nprint(total)"),
        ExecJob("total = 3 * 5"),
    ])
    assert (value.status, value.value) == ("ok", "18")
    assert (printed.status, printed.stdout) == ("no_result", "15\n")
    assert statement.status == "no_result" and "not an expression" in statement.detail


def test_sympy_programs_run_in_heavy_workers(pool):
    result = run_one(pool, ExecJob("import sympy\nx = sympy.symbols('x')\nsympy.solve(x**2 - 9, x)"))
    assert (result.status, result.value) == ("ok", "[-3, 3]")


@pytest.mark.parametrize(("job", "status", "detail"), [
    (ExecJob("def simple_math_problem(:\n    return 1", ENTRY), "syntax_error", "SyntaxError"),
    (ExecJob("x = 1\x00", None), "syntax_error", ""),
    (program("return 1 / 0"), "exec_error", "ZeroDivisionError: division by zero"),
    (program("return None"), "no_result", "None"),
    (ExecJob("def other():\n    return 1", ENTRY), "no_result", "no function named"),
    (program("return input()"), "exec_error", ""),
])
def test_errors_are_reported_not_hidden(pool, job, status, detail):
    result = run_one(pool, job)
    assert result.status == status and detail in result.detail and result.value is None


def test_tinygsm_programs_are_pure_and_state_changers_are_not():
    assert all(sandbox._is_pure(code) for code, _ in make_tinygsm_programs(20))
    assert sandbox._is_pure("from fractions import Fraction\nimport math\ndef f():\n    x = [1]\n    x[0] += 2\n"
                            "    return Fraction(x[0], 4) + math.sqrt(4)")
    for code in ["import math\nmath.pi = 3", "import decimal", "import sys", "from math import *",
                 "def f():\n    return (i for i in []).gi_frame", "x = [].__class__", "setattr(f, 'a', 1)",
                 "open('f')", "class A:\n    pass", "@cache\ndef f():\n    pass", "print(__name__)",
                 "globals()['x'] = 1", "del x", "def f(:"]:
        assert not sandbox._is_pure(code), code


def test_programs_cannot_affect_each_other(pool):
    import math
    from decimal import Decimal

    pristine = program("import math\nfrom decimal import Decimal\nreturn (math.pi, Decimal(1) / Decimal(3), int('7'))")
    meddlers = [
        program("import math\nmath.pi = 3\nreturn math.pi"),
        program("import decimal\ndecimal.getcontext().prec = 3\nreturn decimal.Decimal(1) / decimal.Decimal(3)"),
        program("import builtins\nbuiltins.int = lambda x: 42\nreturn int('7')"),
    ]
    rounds = 6  # enough jobs that chunks hold several: neighbours would share a process if allowed to
    results = pool.run([job for _ in range(rounds) for meddler in meddlers for job in (meddler, pristine)])
    assert [r.value for r in results[::2]] == ["3", "0.333", "42"] * rounds  # each saw its own change
    assert {r.value for r in results[1::2]} == {str((math.pi, Decimal(1) / Decimal(3), 7))}


def test_pure_programs_sharing_a_process_each_start_afresh(pool):
    jobs = [pure("print('a')\nreturn 1"), pure("print('b')\nreturn 2"), pure("while True:\n    pass"),
            pure("return 3"), pure("x = [0] * 10 ** 10\nreturn 0"), pure("print('c')\nreturn 4")]
    assert all(sandbox._is_pure(job.code) for job in jobs)
    results = pool.run(jobs * 6)  # chunks of several jobs: neighbours share a child
    assert [(r.status, r.value, r.stdout) for r in results] == [
        ("ok", "1", "a\n"), ("ok", "2", "b\n"), ("timeout", None, ""), ("ok", "3", ""), ("memory", None, ""),
        ("ok", "4", "c\n")] * 6


def test_scratch_is_writable_and_fresh_for_every_program(pool):
    write = program("open('notes.txt', 'w').write('12')\nreturn int(open('notes.txt').read()) + len(os.listdir('.'))")
    look = program("return len(os.listdir('.')) + 100")
    assert [r.value for r in pool.run([write, look, write])] == ["13", "100", "13"]


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("ECHOCHAMBER_TEST_SECRET", "hunter2")
    with SandboxPool(workers=1, timeout_s=TIMEOUT_S, heavy_preload=()) as pool:
        result = run_one(pool, program("return sorted(os.environ)"))
    assert result.status == "ok" and "ECHOCHAMBER_TEST_SECRET" not in result.value and "PATH" in result.value


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="workers"):
        SandboxPool(workers=0)
    with pytest.raises(UserError, match="timeout_s"):
        SandboxPool(timeout_s=0)


# ---------------------------------------------------------------- hostile programs

HOSTILE = {
    "infinite loop": (program("while True:\n    pass"), {"timeout"}, ""),
    "sleep past the wall clock": (program("import time\ntime.sleep(60)"), {"timeout"}, "wall-clock"),
    "fork bomb": (program("while True:\n    os.fork()"), {"forbidden"}, "os.fork"),
    "fork bomb via subprocess": (program("import subprocess\nwhile True:\n    subprocess.Popen(['sh', '-c', ':'])"),
                                 {"forbidden"}, ""),
    "thread bomb": (program("import threading\nwhile True:\n    threading.Thread(target=input).start()"),
                    {"exec_error"}, "can't start new thread"),
    "memory bomb": (program("blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 26))"), {"memory"}, ""),
    "deep recursion": (program("def down(n):\n    return down(n + 1)\nreturn down(0)"), {"exec_error"}, "RecursionError"),
    "deep recursion with the limit lifted": (
        program("sys.setrecursionlimit(10**8)\na, b = [], []\nfor _ in range(300_000):\n    a, b = [a], [b]\nreturn a == b"),
        {"killed", "memory", "exec_error"}, ""),
    "sockets": (program("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)"), {"forbidden"}, "socket"),
    "http": (program("import urllib.request\nreturn urllib.request.urlopen('http://example.com').read()"),
             {"forbidden"}, ""),
    "kill the worker": (program("os.kill(os.getppid(), signal.SIGKILL)"), {"forbidden"}, "os.kill"),
    "kill the pool": (program(f"os.kill({os.getpid()}, signal.SIGKILL)"), {"forbidden"}, "os.kill"),
    "kill everything": (program("os.kill(-1, signal.SIGKILL)"), {"forbidden"}, "os.kill"),
    "sys.exit": (program("sys.exit(3)"), {"exec_error"}, "SystemExit: 3"),
    "os._exit": (program("os._exit(0)"), {"killed"}, "exited with code 0"),
    "gigabytes of output": (program("while True:\n    print('x' * 1_000_000)"), {"output_limit"}, "printed more"),
    "gigabytes to stderr": (program("while True:\n    sys.stderr.write('y' * 1_000_000)"), {"output_limit"}, ""),
    "signal tampering": (program("for s in (signal.SIGPROF, signal.SIGXCPU, signal.SIGTERM, signal.SIGALRM):\n"
                                 "    signal.signal(s, signal.SIG_IGN)\n"
                                 "signal.setitimer(signal.ITIMER_PROF, 0)\n"
                                 "signal.pthread_sigmask(signal.SIG_BLOCK, range(1, 32))\n"
                                 "while True:\n    pass"), {"timeout"}, ""),
    "ctypes": (program("import ctypes\nreturn ctypes.CDLL(None).getpid()"), {"forbidden"}, "ctypes"),
    "rlimit change": (program("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))"), {"forbidden"}, ""),
    "symlink out of scratch": (program("os.symlink('/etc/passwd', 'p')\nreturn open('p').read()"), {"forbidden"}, ""),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_gets_its_status_and_the_pool_survives(pool, name):
    job, statuses, detail = HOSTILE[name]
    result = run_one(pool, job)
    assert result.status in statuses and detail in result.detail, result
    assert result.status in STATUSES and result.value is None
    assert_pool_serves(pool)


@pytest.fixture
def outside(tmp_path):
    """Files outside scratch that hostile programs go after; the test checks nothing changed."""
    (tmp_path / "victim.txt").write_text("original")
    (tmp_path / "secret.key").write_text("s3cr3t-token")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "leaf.txt").write_text("leaf")
    os.chmod(tmp_path, 0o755)
    before = sorted((str(p), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*"))
    yield tmp_path
    assert sorted((str(p), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("body", [
    "open('{d}/victim.txt', 'w').write('pwned')",
    "open('{d}/new.txt', 'x').write('pwned')",
    "os.remove('{d}/victim.txt')",
    "os.rename('{d}/victim.txt', 'stolen.txt')",
    "shutil.rmtree('{d}/tree')",
    "os.chmod('{d}/victim.txt', 0o777)",
    "os.truncate('{d}/victim.txt', 0)",
    "fd = os.open('{d}/victim.txt', os.O_WRONLY)\nos.write(fd, b'pwned')",
    "os.chdir('{d}')\nopen('victim.txt', 'w').write('pwned')",
    "open('../../../../..{d}/victim.txt', 'a').write('pwned')",
])
def test_writes_and_deletes_outside_scratch_are_forbidden(pool, outside, body):
    result = run_one(pool, program(body.format(d=outside)))
    assert result.status == "forbidden", result


@pytest.mark.parametrize("body", [
    "return open('{d}/secret.key').read()",
    "return os.listdir('{d}')",
    "from pathlib import Path\nreturn Path('{d}/secret.key').read_text()",
    "return open('/etc/passwd').read()",
    "return open('/proc/self/environ').read()",
])
def test_reads_outside_scratch_are_forbidden(pool, outside, body):
    result = run_one(pool, program(body.format(d=outside)))
    assert result.status == "forbidden" and "s3cr3t" not in result.detail + result.stdout, result


def test_mixed_batch_runs_every_normal_program_and_the_pool_stays_alive(pool, tmp_path):
    programs = make_tinygsm_programs(500, seed=1)
    hostile = [HOSTILE[name][0] for name in ("infinite loop", "fork bomb", "memory bomb", "deep recursion",
                                             "sockets", "kill the worker", "kill the pool", "sys.exit",
                                             "os._exit", "gigabytes of output", "signal tampering", "ctypes")]
    jobs: list[ExecJob] = [ExecJob(code, ENTRY) for code, _ in programs]
    for k, job in enumerate(hostile):  # spread through the batch, so they share chunks with normal jobs
        jobs.insert(k * 41 + 7, job)
    results = pool.run(jobs)
    hostile_ids = {id(job) for job in hostile}
    normal = [r for job, r in zip(jobs, results, strict=True) if id(job) not in hostile_ids]
    bad = [r for job, r in zip(jobs, results, strict=True) if id(job) in hostile_ids]
    assert [(r.status, int(r.value)) for r in normal] == [("ok", answer) for _, answer in programs]
    assert len(bad) == 12 and all(r.status != "ok" for r in bad), bad
    assert_pool_serves(pool)


# ---------------------------------------------------------------- the pool itself

def test_dead_worker_is_replaced_and_its_jobs_finish():
    others = sandbox_workers()
    with SandboxPool(workers=2, timeout_s=TIMEOUT_S, heavy_preload=()) as pool:
        mine = set(sandbox_workers()) - set(others)
        jobs = [program(f"import time\ntime.sleep(0.05)\nreturn {i}") for i in range(40)]
        killer = threading.Timer(0.5, lambda: [os.kill(pid, signal.SIGKILL) for pid in mine])
        killer.start()
        results = pool.run(jobs)
        killer.join()
        assert all(r.status in ("ok", "killed") for r in results)
        assert [r.value for r in results if r.status == "ok"] == [str(i) for i, r in enumerate(results) if r.status == "ok"]
        assert sum(r.status == "killed" for r in results) <= 2
        assert pool.stats["workers_replaced"] >= 1
        assert_pool_serves(pool)


def test_hung_worker_is_replaced():
    others = sandbox_workers()
    with SandboxPool(workers=1, timeout_s=0.5, heavy_preload=()) as pool:
        (pid,) = set(sandbox_workers()) - set(others)
        os.kill(pid, signal.SIGSTOP)  # as if wedged: alive, never answering
        started = time.monotonic()
        result = run_one(pool, program("return 1"))
        assert result.status == "timeout" and "stopped answering" in result.detail
        assert time.monotonic() - started < 30
        assert pool.stats["workers_replaced"] == 1
        assert_pool_serves(pool)


def test_tampered_worker_is_replaced():
    others = sandbox_workers()
    with SandboxPool(workers=1, timeout_s=TIMEOUT_S, heavy_preload=()) as pool:
        (pid,) = set(sandbox_workers()) - set(others)
        with open(f"/proc/{pid}/fd/1", "wb") as reply_pipe:  # forge a reply on the worker's channel
            reply_pipe.write(b'{"not": "a result"}\n')
        results = pool.run([program(f"return {i}") for i in range(5)])
        assert sum(r.status == "killed" and "malformed" in r.detail for r in results) <= 1
        assert sum(r.status == "ok" for r in results) >= 4
        assert pool.stats["workers_replaced"] == 1
        assert_pool_serves(pool)


def test_run_is_thread_safe(pool):
    programs = make_tinygsm_programs(30, seed=2)
    outputs: dict[int, list[ExecResult]] = {}

    def work(k: int) -> None:
        outputs[k] = pool.run([ExecJob(code, ENTRY) for code, _ in programs[k::3]])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(3):
        assert [int(r.value) for r in outputs[k]] == [answer for _, answer in programs[k::3]]


def test_close_stops_workers_and_removes_scratch():
    others = sandbox_workers()
    pool = SandboxPool(workers=2, timeout_s=TIMEOUT_S, heavy_preload=())
    mine = {pid: scratch for pid, scratch in sandbox_workers().items() if pid not in others}
    assert len(mine) == 2 and all(Path(scratch).is_dir() for scratch in mine.values())
    pool.close()
    assert not set(sandbox_workers()) & set(mine)
    assert not any(Path(scratch).parent.exists() for scratch in mine.values())
    with pytest.raises(RuntimeError, match="close"):
        pool.run([program("return 1")])


@pytest.mark.skipif(os.geteuid() != 0, reason="exercises the root path (drop to nobody)")
def test_kernel_layers_hold_without_the_audit_hook(tmp_path):
    """As if a program had got past the audit hook: the worker's Landlock domain and network namespace
    and the child's rlimits and uid still stop fork, TCP, signals and files outside scratch."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(444, None, 0, 1) < 6:
        pytest.skip("kernel without Landlock ABI >= 6")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.chown(scratch, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    (tmp_path / "secret.key").write_text("s3cr3t")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    attempts = {
        "fork": "os.fork()",
        "read outside": f"open('{tmp_path}/secret.key').read()",
        "write outside": f"open('{tmp_path}/new.txt', 'w').write('x')",
        # the child keeps CAP_DAC_READ_SEARCH (to import from /root/.pyenv): the classic escape it allows
        "open by file handle": f"open_by_handle('{tmp_path}/secret.key', '{scratch}')",
        "signal the parent": "os.kill(os.getppid(), 0)",
        "tcp": f"socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "write scratch": "open('ok.txt', 'w').write('x')",
        "import from stdlib": "import wave",
    }
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            roots = tuple(sorted({os.path.realpath(p) for p in sys.path if os.path.isdir(p)}))
            devnull = os.open(os.devnull, os.O_RDWR)
            network = confine._enter_network_namespace(libc)
            abi = confine._landlock_worker(libc, roots, str(scratch))
            ctx = confine._WorkerContext(str(scratch), roots, devnull, libc, os.fork, parent, abi, (65534, 65534),
                                         2 << 30, 10.0, 5.0, 4096)
            os.chdir(scratch)
            confine._confine(ctx, write_fd, 1)
            outcomes = {"network namespace": str(network)}
            for name, statement in attempts.items():
                try:
                    exec(statement, {"os": os, "socket": socket, "open_by_handle": open_by_handle})
                    outcomes[name] = "allowed"
                except OSError as exc:
                    outcomes[name] = type(exc).__name__
            os.write(3, json.dumps(outcomes).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as report:
        outcomes = json.loads(report.read())
    listener.close()
    assert outcomes.pop("tcp") != "allowed"  # unreachable (no interface up) or refused by Landlock
    assert outcomes == {
        "network namespace": "True",
        "fork": "BlockingIOError",
        "read outside": "PermissionError",
        "write outside": "PermissionError",
        "open by file handle": "PermissionError",
        "signal the parent": "PermissionError",
        "write scratch": "allowed",
        "import from stdlib": "allowed",
    }
    assert not (tmp_path / "new.txt").exists()


def open_by_handle(path: str, mount_dir: str) -> bytes:
    """Read `path` through name_to_handle_at/open_by_handle_at, which bypass path permission checks."""
    libc = ctypes.CDLL(None, use_errno=True)
    handle, mount_id = ctypes.create_string_buffer(struct.pack("=Ii", 128, 0) + bytes(128)), ctypes.c_int()
    if libc.name_to_handle_at(-100, path.encode(), handle, ctypes.byref(mount_id), 0) != 0:  # -100: AT_FDCWD
        raise OSError(ctypes.get_errno(), "name_to_handle_at")
    fd = libc.open_by_handle_at(os.open(mount_dir, os.O_RDONLY | os.O_DIRECTORY), handle, os.O_RDONLY)
    if fd < 0:  # OSError picks the subclass from errno: EACCES -> PermissionError
        raise OSError(ctypes.get_errno(), "open_by_handle_at")
    return os.read(fd, 100)
