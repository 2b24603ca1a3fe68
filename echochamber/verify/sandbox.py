"""Run generated programs out of process: persistent workers fork confined children that run them.

Layers, outermost first. The kernel layers contain a program; the audit hook names what it tried.
1. The pool (this process) never runs program code. A worker that dies, stops answering or sends a
   malformed reply is killed with its process group and replaced; its current program is reported,
   the rest re-queued.
2. A worker is a fresh `python -I -B` with a scrubbed environment, its own scratch directory, a
   private network namespace (no interface up) and, where the kernel has Landlock, a kernel file
   policy: read-only on the import paths, read-write on scratch, nothing else; no TCP, no signals
   leaving the worker.
3. Programs run in a forked child with its own process group, no inherited descriptors, rlimits
   (address space, processes = 1, file size, open files, no core, CPU), uid `nobody` when root (so
   RLIMIT_NPROC holds: no fork, no threads), PDEATHSIG, and an audit hook that stops a program as
   `forbidden` on sockets, ctypes/cffi, fork/exec/subprocess, signals to others, rlimit changes,
   chmod/links, writes or deletes outside scratch, reads outside scratch and the import paths. An
   audit hook alone is no boundary (PEP 578: ctypes reached through numpy gets past it); 2-3 are.
4. The worker enforces the wall clock; ITIMER_PROF gives each program a precise CPU limit, backed
   by RLIMIT_CPU; stdout/stderr are kept in memory with a byte cap.

Between programs: one that passes `_is_pure` (arithmetic on its own names, math, Fraction; no
attribute or foreign writes, no dunders, no I/O) can leave no trace in its interpreter, so
consecutive pure programs share a child, each with a fresh namespace, CPU timer, output and
deadline. A fork costs ~500 page faults, 2-5 ms on a VM: more than running a TinyGSM program.
Every other program gets a child of its own. Programs naming a `heavy_preload` module (sympy,
numpy) run in heavy workers, started on first use, so only they pay for forking a large heap.

ExecResult.status (`value` is set only for ok):
  ok            the entry function returned, or the last expression evaluated to, a value other
                than None; `value` is its str(), cut to 1,000 characters
  syntax_error  the code does not compile
  exec_error    an exception escaped (RecursionError, SystemExit, OSError from the 4 MiB file cap)
  no_result     no such entry function, last statement not an expression, or the value is None
  timeout       the wall-clock or the CPU limit was reached
  memory        MemoryError (address-space limit)
  killed        its process ended without a report: a signal (SIGSEGV from a C-stack overflow...),
                os._exit, or its worker died or hung meanwhile
  output_limit  more than `max_output_bytes` printed
  forbidden     the audit hook refused an operation; `detail` says which
Linux only.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import ctypes
import gc
import importlib
import json
import math
import os
import pwd
import re
import resource
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any, NoReturn

from echochamber.errors import UserError

STATUSES = ("ok", "syntax_error", "exec_error", "no_result", "timeout", "memory", "killed",
            "output_limit", "forbidden")
LIGHT_PRELOAD = ("math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools",
                 "collections", "random", "re", "datetime", "string", "operator")
HEAVY_PRELOAD = ("sympy", "numpy")
# Run once in a worker that preloads the module, so children inherit what it builds lazily on first
# use (imports inside functions, caches): a child's first solve() costs ~90 ms CPU cold, ~20 warm.
_WARMUPS = {"sympy": "import sympy\nx = sympy.symbols('x')\nsympy.solve(x**2 - 4, x)\nsympy.simplify((x**2 - 1) / (x - 1))\n"
                     "sympy.factor(x**2 - 1)\nsympy.expand((x + 1)**3)\nsympy.nsimplify(0.5)\nsympy.N(sympy.pi)\n"
                     "sympy.Rational(1, 3) + sympy.sqrt(2)\nsympy.Eq(x, 1)\n"}

_MAX_VALUE_CHARS, _MAX_DETAIL_CHARS = 1000, 300
_SCRATCH_FILE_BYTES, _MAX_SCRATCH_WRITES, _OPEN_FILES = 4 << 20, 64, 32  # disk use per program <= 256 MiB
_MAX_CHUNK = 64  # jobs per round trip; results still stream back one by one
_UNRESPONSIVE_GRACE_S = 5.0  # beyond timeout_s, before the pool calls a silent worker hung
_STARTUP_TIMEOUT_S = 60.0
_REPORT_FD, _SETUP_FAILED_EXIT = 3, 70
_REUSABLE = frozenset({"ok", "syntax_error", "exec_error", "no_result"})  # a shared child goes on after these
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from echochamber.verify.sandbox import _worker_main; del sys.path[0]; _worker_main(sys.argv[2])")

# Linux constants (x86-64 and arm64 share the Landlock syscall numbers).
_PR_SET_PDEATHSIG, _PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS = 1, 8, 38
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_CAPABILITY_VERSION_3, _CAP_DAC_READ_SEARCH = 0x20080522, 1 << 2
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_READ = (1 << 2) | (1 << 3)  # READ_FILE | READ_DIR
_LANDLOCK_FS_BITS = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}  # number of file-system rights per ABI

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit event -> (writes?, positions of path arguments, positions of dir_fd arguments)
_PATH_EVENTS: dict[str, tuple[bool, tuple[int, ...], tuple[int, ...]]] = {
    "os.listdir": (False, (0,), ()), "os.scandir": (False, (0,), ()), "os.chdir": (False, (0,), ()),
    "os.listxattr": (False, (0,), ()), "os.getxattr": (False, (0,), ()),
    "os.remove": (True, (0,), (1,)), "os.rmdir": (True, (0,), (1,)), "os.mkdir": (True, (0,), (2,)),
    "os.rename": (True, (0, 1), (2, 3)), "os.truncate": (True, (0,), ()), "os.utime": (True, (0,), (3,)),
    "os.setxattr": (True, (0,), ()), "os.removexattr": (True, (0,), ()), "shutil.rmtree": (True, (0,), ()),
}
_DENIED_EVENTS = frozenset({
    "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.Popen",
    "resource.setrlimit", "resource.prlimit", "os.chmod", "os.chown", "os.link", "os.symlink",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames", "code.__new__",
    "fcntl.ioctl", "webbrowser.open",
})
_DENIED_PREFIXES = ("os.exec", "os.posix_spawn", "ctypes.", "socket.", "sqlite3.")
_DENIED_IMPORTS = frozenset({"ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess"})  # native doors

# What a pure program may contain (see _is_pure); anything else makes it impure.
_PURE_NODES = frozenset({
    ast.Module, ast.Expr, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AugAssign,
    ast.AnnAssign, ast.For, ast.While, ast.If, ast.Break, ast.Continue, ast.Pass, ast.Try, ast.ExceptHandler,
    ast.Raise, ast.Assert, ast.Global, ast.Nonlocal, ast.Import, ast.ImportFrom, ast.alias, ast.BoolOp,
    ast.NamedExpr, ast.BinOp, ast.UnaryOp, ast.Lambda, ast.IfExp, ast.Dict, ast.Set, ast.ListComp, ast.SetComp,
    ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Compare, ast.Call, ast.keyword, ast.FormattedValue,
    ast.JoinedStr, ast.Constant, ast.Attribute, ast.Subscript, ast.Starred, ast.Name, ast.List, ast.Tuple,
    ast.Slice, ast.Load, ast.Store, *ast.boolop.__subclasses__(), *ast.operator.__subclasses__(),
    *ast.unaryop.__subclasses__(), *ast.cmpop.__subclasses__(),
})
_PURE_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "complex", "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset",
    "int", "isinstance", "len", "list", "map", "max", "min", "pow", "print", "range", "repr", "reversed", "round",
    "set", "slice", "sorted", "str", "sum", "tuple", "zip", "ArithmeticError", "Exception", "OverflowError",
    "TypeError", "ValueError", "ZeroDivisionError",
})
_PURE_FROM_IMPORTS = {"math": None, "fractions": frozenset({"Fraction"})}  # None: any name but *
_HIDDEN_ATTRS = ("_", "f_", "gi_", "cr_", "ag_", "tb_", "co_")  # dunders, frames, code: ways out


@dataclass(frozen=True)
class ExecJob:
    code: str
    entry: str | None = None  # zero-argument function to call (TinyGSM: "simple_math_problem");
    # None: the value of the program's last expression statement (OMI1 blocks)


@dataclass(frozen=True)
class ExecResult:
    status: str  # one of STATUSES
    value: str | None  # str() of the value when status == "ok"
    detail: str = ""  # one short line: exception type and message, or the limit that was hit
    stdout: str = ""  # what the program printed (capped), e.g. for an OMI1 block ending in print()


class SandboxPool:
    """Persistent sandbox workers. `run` keeps job order and is thread-safe (calls are serialised)."""

    def __init__(self, workers: int = 2, timeout_s: float = 3.0, cpu_s: float = 2.0, memory_mb: int = 512,
                 max_output_bytes: int = 1 << 16, preload: Sequence[str] = LIGHT_PRELOAD,
                 heavy_preload: Sequence[str] = HEAVY_PRELOAD) -> None:
        if not sys.platform.startswith("linux"):
            raise UserError("the code sandbox needs Linux (fork, rlimits, pidfd, namespaces)")
        for name, value, low in (("workers", workers, 1), ("timeout_s", timeout_s, 0.05),
                                 ("cpu_s", cpu_s, 0.05), ("memory_mb", memory_mb, 16),
                                 ("max_output_bytes", max_output_bytes, 1)):
            if not value >= low:
                raise UserError(f"sandbox {name} must be >= {low}, got {value}")
        self._size = workers
        self._limits = {"timeout_s": float(timeout_s), "cpu_s": float(cpu_s), "memory_mb": int(memory_mb),
                        "max_output_bytes": int(max_output_bytes)}
        self._preload = {"light": list(preload), "heavy": [*preload, *heavy_preload]}
        self._heavy = re.compile("|".join(rf"\b{re.escape(m)}\b" for m in heavy_preload)) if heavy_preload else None
        self._child_user = _unprivileged_user() if os.geteuid() == 0 else None
        self._root = tempfile.mkdtemp(prefix="echochamber-sandbox-")
        os.chmod(self._root, 0o711)  # children running as nobody must reach their scratch inside
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._workers: list[_Worker] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._isolation: dict[str, int] = {}
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._selector, self._root)
        for _ in range(workers):
            self._spawn("light")
        while not all(worker.ready for worker in self._workers):
            self._pump([], {}, {})

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, jobs: Sequence[ExecJob]) -> list[ExecResult]:
        jobs = list(jobs)
        results: dict[int, ExecResult] = {}
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxPool.run() after close()")
            queues = self._plan(jobs)
            for kind, queue in queues.items():
                for _ in range(min(self._size, len(queue)) - sum(w.kind == kind for w in self._workers)):
                    self._spawn(kind)
            while any(queues.values()) or any(worker.chunk for worker in self._workers):
                self._pump(jobs, results, queues)
            ordered = [results[i] for i in range(len(jobs))]
            self._counts["programs"] += len(jobs)
            self._counts.update(f"programs_{result.status}" for result in ordered)
        return ordered

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._finalizer()

    @property
    def stats(self) -> dict[str, int]:
        """For logging: programs, programs_<status>, workers_started, workers_replaced, and the isolation
        in force: network_namespace (0/1), landlock_abi (0 = none), child_uid."""
        with self._lock:
            return {**self._isolation, **self._counts}

    def _plan(self, jobs: list[ExecJob]) -> dict[str, collections.deque[tuple[bool, list[int]]]]:
        """Chunks per worker kind, each all pure (one shared child) or all impure (a child apiece)."""
        groups: dict[tuple[str, bool], list[int]] = {}
        for index, job in enumerate(jobs):
            if not isinstance(job, ExecJob) or not isinstance(job.code, str):
                raise TypeError(f"SandboxPool.run takes ExecJob items with str code, got {job!r:.80}")
            kind = "heavy" if self._heavy is not None and self._heavy.search(job.code) else "light"
            groups.setdefault((kind, _is_pure(job.code)), []).append(index)
        size = max(1, min(_MAX_CHUNK, math.ceil(len(jobs) / (4 * self._size))))
        queues: dict[str, collections.deque[tuple[bool, list[int]]]] = {}
        for (kind, pure), ids in groups.items():
            queues.setdefault(kind, collections.deque()).extend((pure, ids[i:i + size]) for i in range(0, len(ids), size))
        return queues

    def _spawn(self, kind: str) -> None:
        scratch = tempfile.mkdtemp(prefix=f"{kind}-", dir=self._root)
        if self._child_user is not None:
            os.chown(scratch, *self._child_user)
        config = {"scratch": scratch, "preload": self._preload[kind], "child_user": self._child_user,
                  **self._limits}
        with open(scratch + ".log", "wb") as log:  # the worker's own stderr: tracebacks if it crashes
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, _PACKAGE_ROOT, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=scratch,
                env=_scrubbed_env(scratch), start_new_session=True)
        worker = _Worker(kind, proc, scratch, deadline=time.monotonic() + _STARTUP_TIMEOUT_S)
        self._selector.register(proc.stdout.fileno(), selectors.EVENT_READ, worker)
        self._workers.append(worker)
        self._counts["workers_started"] += 1

    def _pump(self, jobs: list[ExecJob], results: dict[int, ExecResult],
              queues: dict[str, collections.deque[tuple[bool, list[int]]]]) -> None:
        """One round: hand chunks to idle workers, read what arrived, replace workers past deadline."""
        for worker in list(self._workers):
            if worker.ready and not worker.chunk and queues.get(worker.kind):
                self._send(worker, *queues[worker.kind].popleft(), jobs, results, queues)
        deadlines = [w.deadline for w in self._workers if w.chunk or not w.ready]
        if not deadlines:
            return
        for key, _ in self._selector.select(max(0.0, min(deadlines) - time.monotonic())):
            self._receive(key.data, results, queues)
        now = time.monotonic()
        for worker in [w for w in self._workers if (w.chunk or not w.ready) and now > w.deadline]:
            self._replace(worker, results, queues, "timeout", "sandbox worker stopped answering; replaced")

    def _send(self, worker: _Worker, pure: bool, chunk: list[int], jobs: list[ExecJob],
              results: dict[int, ExecResult], queues: dict[str, collections.deque[tuple[bool, list[int]]]]) -> None:
        worker.pure, worker.chunk, worker.done = pure, chunk, 0
        worker.deadline = time.monotonic() + self._limits["timeout_s"] + _UNRESPONSIVE_GRACE_S
        message = {"shared": pure, "jobs": [[jobs[i].code, jobs[i].entry] for i in chunk]}
        try:
            _write_all(worker.proc.stdin.fileno(), json.dumps(message).encode() + b"\n")
        except BrokenPipeError:  # it died while idle: nothing was delivered, nobody to blame
            self._replace(worker, results, queues, None)

    def _receive(self, worker: _Worker, results: dict[int, ExecResult],
                 queues: dict[str, collections.deque[tuple[bool, list[int]]]]) -> None:
        data = os.read(worker.proc.stdout.fileno(), 1 << 16)
        if not data:
            self._replace(worker, results, queues, "killed", "sandbox worker died while running this; replaced")
            return
        worker.buffer += data
        while (end := worker.buffer.find(b"\n")) >= 0:
            line = bytes(worker.buffer[:end])
            del worker.buffer[:end + 1]
            if not self._accept(worker, line, results):
                self._replace(worker, results, queues, "killed", "sandbox worker sent a malformed reply; replaced")
                return
        if len(worker.buffer) > 8 * self._limits["max_output_bytes"] + (1 << 20):
            self._replace(worker, results, queues, "killed", "sandbox worker sent an oversized reply; replaced")

    def _accept(self, worker: _Worker, line: bytes, results: dict[int, ExecResult]) -> bool:
        try:
            message = json.loads(line)
        except ValueError:
            return False
        if not worker.ready:
            keys = ("network_namespace", "landlock_abi", "child_uid")
            if not isinstance(message, dict) or not all(isinstance(message.get(k), int) for k in keys):
                return False
            worker.ready = True
            self._isolation = {k: int(message[k]) for k in keys}
            return True
        if not worker.chunk or not _is_wire_result(message):
            return False
        results[worker.chunk[worker.done]] = ExecResult(*message)
        worker.done += 1
        worker.deadline = time.monotonic() + self._limits["timeout_s"] + _UNRESPONSIVE_GRACE_S
        if worker.done == len(worker.chunk):
            worker.chunk = []
        return True

    def _replace(self, worker: _Worker, results: dict[int, ExecResult],
                 queues: dict[str, collections.deque[tuple[bool, list[int]]]], status: str | None,
                 detail: str = "") -> None:
        """Kill `worker`, blame its current job with `status` (None: blame nobody), re-queue the rest."""
        self._workers.remove(worker)
        log = _tail(worker.scratch + ".log")
        _stop_worker(worker, self._selector)
        if not worker.ready:
            raise RuntimeError(f"sandbox worker failed to start ({detail}); its stderr ends with: {log}")
        remaining = worker.chunk[worker.done:]
        if remaining and status is not None:
            results[remaining.pop(0)] = ExecResult(status, None, detail)
        if remaining:
            queues[worker.kind].appendleft((worker.pure, remaining))
        self._counts["workers_replaced"] += 1
        self._spawn(worker.kind)


@dataclass
class _Worker:
    kind: str  # "light" or "heavy": which preload it was started with
    proc: subprocess.Popen[bytes]
    scratch: str
    deadline: float  # when the pool gives up waiting for its next line
    ready: bool = False
    pure: bool = False  # whether the current chunk may share one child
    chunk: list[int] = field(default_factory=list)  # job indices sent and not all answered
    done: int = 0  # answered so far in chunk
    buffer: bytearray = field(default_factory=bytearray)


def _stop_worker(worker: _Worker, selector: selectors.BaseSelector) -> None:
    selector.unregister(worker.proc.stdout.fileno())
    with contextlib.suppress(ProcessLookupError):  # already gone is fine; children die via PDEATHSIG
        os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    worker.proc.stdin.close()
    worker.proc.stdout.close()
    shutil.rmtree(worker.scratch)
    os.remove(worker.scratch + ".log")


def _shutdown(workers: list[_Worker], selector: selectors.BaseSelector, root: str) -> None:
    for worker in workers:
        _stop_worker(worker, selector)
    workers.clear()
    selector.close()
    shutil.rmtree(root)


def _is_pure(code: str) -> bool:
    """Whether a program can leave no trace in the interpreter that runs it, so the next program may
    share the process: only listed syntax, names it binds itself or pure builtins, imports of math and
    Fraction, attribute reads (no dunders, frames or code objects), item writes only into its own
    names. Conservative: anything else is impure and gets a fresh process."""
    try:
        nodes = list(ast.walk(ast.parse(code)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    bound = set(_PURE_BUILTINS)
    for node in nodes:
        if type(node) not in _PURE_NODES:
            return False
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                return False
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Import):
            if any(alias.name != "math" for alias in node.names):
                return False
            bound.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            allowed = _PURE_FROM_IMPORTS.get(node.module or "", frozenset())
            if node.level or any(a.name == "*" or (allowed is not None and a.name not in allowed) for a in node.names):
                return False
            bound.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and not isinstance(node.ctx, ast.Load):
            if isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Name):  # writes into its own names only
                return False
        elif isinstance(node, ast.Attribute) and node.attr.startswith(_HIDDEN_ATTRS):
            return False
    return all(node.id in bound for node in nodes if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load))


def _unprivileged_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def _scrubbed_env(scratch: str) -> dict[str, str]:
    # Nothing from the caller's environment (tokens, proxies); one BLAS thread keeps numpy's heap small.
    return {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _tail(path: str) -> str:
    with open(path, "rb") as log:
        log.seek(max(0, os.fstat(log.fileno()).st_size - 1500))
        return log.read().decode(errors="replace").strip() or "(empty)"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _is_wire_result(message: Any) -> bool:
    return (isinstance(message, list) and len(message) == 4 and message[0] in STATUSES
            and (message[1] is None or isinstance(message[1], str))
            and isinstance(message[2], str) and isinstance(message[3], str))


# ---------------------------------------------------------------- worker process

@dataclass(frozen=True)
class _WorkerContext:
    scratch: str
    read_roots: tuple[str, ...]  # the import paths: the only places outside scratch a program may read
    devnull: int
    libc: ctypes.CDLL
    fork: Callable[[], int]  # fork(2) called with the GIL held (a PyDLL function), see _run_in_child
    pid: int
    landlock_abi: int
    child_user: tuple[int, int] | None
    address_space: int  # RLIMIT_AS: the warm worker's own size plus memory_mb
    timeout_s: float
    cpu_s: float
    max_output_bytes: int


def _worker_main(config_text: str) -> None:
    config = json.loads(config_text)
    for name in config["preload"]:
        importlib.import_module(name)
        exec(_WARMUPS.get(name, ""), {})  # our own code, before any confinement
    libc = ctypes.CDLL(None, use_errno=True)
    read_roots = tuple(sorted({os.path.realpath(p) for p in sys.path if os.path.isdir(p)}))
    with open("/proc/self/statm") as statm:  # /proc and /dev are out of reach once under Landlock
        own_size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    devnull = os.open(os.devnull, os.O_RDWR)
    network = _enter_network_namespace(libc)
    abi = _landlock_worker(libc, read_roots, config["scratch"])
    child_user = tuple(config["child_user"]) if config["child_user"] else None
    fork = ctypes.PyDLL(None, use_errno=True)["fork"]
    ctx = _WorkerContext(config["scratch"], read_roots, devnull, libc, fork, os.getpid(), abi, child_user,
                         own_size + config["memory_mb"] * (1 << 20), config["timeout_s"], config["cpu_s"],
                         config["max_output_bytes"])
    gc.collect()
    gc.freeze()  # a GC pass in a child would otherwise touch, and so copy, every page of the warm heap
    ready = {"network_namespace": int(network), "landlock_abi": abi,
             "child_uid": child_user[0] if child_user else os.getuid()}
    _write_all(1, json.dumps(ready).encode() + b"\n")
    for line in sys.stdin.buffer:
        message = json.loads(line)
        jobs, start = message["jobs"], 0
        while start < len(jobs):  # a shared child may stop early (a non-clean status); go on in a new one
            group = jobs[start:] if message["shared"] else jobs[start:start + 1]
            start += _run_in_child(ctx, group)


def _enter_network_namespace(libc: ctypes.CDLL) -> bool:
    # As root unshare works directly; elsewhere a user namespace makes it possible where allowed.
    return any(libc["unshare"](flags) == 0 for flags in (_CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET))


def _landlock_worker(libc: ctypes.CDLL, read_roots: tuple[str, ...], scratch: str) -> int:
    """Confine this worker (and so every child) to reading `read_roots` and using `scratch`; no TCP, no
    signals leaving the domain. Returns the Landlock ABI in force, 0 when the kernel has none."""
    syscall = libc["syscall"]
    abi = syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)  # flag 1: ask for the ABI version
    if abi < 1:
        return 0
    fs_rights = (1 << _LANDLOCK_FS_BITS[min(abi, 5)]) - 1
    attr = struct.pack("=QQQ", fs_rights, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    attr = attr[:8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = _check(syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0))
    try:
        for path, rights in [*((root, _LANDLOCK_READ) for root in read_roots), (scratch, fs_rights)]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                _check(syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, struct.pack("=Qi", rights, fd), 0))
            finally:
                os.close(fd)
        _check(libc["prctl"](_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        _check(syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0))
    finally:
        os.close(ruleset)
    return abi


def _check(ret: int) -> int:
    if ret < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return ret


def _run_in_child(ctx: _WorkerContext, group: list[list[Any]]) -> int:
    """Run `group` in one fresh child, forwarding each result as it comes; returns how many got one."""
    if os.listdir(ctx.scratch):  # every child starts from an empty scratch
        for item in os.scandir(ctx.scratch):
            shutil.rmtree(item.path) if item.is_dir(follow_symlinks=False) else os.remove(item.path)
    read_fd, write_fd = os.pipe()
    # fork(2) itself, not os.fork(): CPython's after-fork hooks dirty ~170 pages per child, and a page
    # fault costs 5-10 us on a VM. Safe here: the worker is single-threaded and holds no lock now. (So
    # `random` is not reseeded either: every child starts from the same state, reproducibly.)
    pid = _check(ctx.fork())
    if pid == 0:
        os.close(read_fd)
        _child_main(ctx, group, write_fd)
    os.close(write_fd)
    pidfd = os.pidfd_open(pid)
    answered, pending = 0, bytearray()
    deadline, report_cap = time.monotonic() + ctx.timeout_s, 8 * ctx.max_output_bytes + (1 << 16)
    watched, exited, wall_killed, oversized = [pidfd, read_fd], False, False, False
    try:
        while not exited or read_fd in watched:  # after the exit, drain the lines left in the pipe
            wait_s = None if exited or wall_killed else deadline - time.monotonic()
            if wait_s is not None and wait_s <= 0:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                wall_killed, wait_s = True, None
            ready, _, _ = select.select(watched, [], [], wait_s)
            if read_fd in ready:
                chunk = os.read(read_fd, 1 << 16)
                pending += chunk
                while (end := pending.find(b"\n")) >= 0 and answered < len(group):
                    _write_all(1, _checked_line(bytes(pending[:end])) + b"\n")
                    del pending[:end + 1]
                    answered, deadline = answered + 1, time.monotonic() + ctx.timeout_s
                if not chunk:
                    watched.remove(read_fd)
                elif len(pending) > report_cap and not oversized:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    oversized = True
            if pidfd in ready:
                _, wait_status, usage = os.wait4(pid, 0)
                watched.remove(pidfd)
                exited = True
    finally:
        os.close(read_fd)
        os.close(pidfd)
    clean_exit = os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0 and not oversized
    if answered < len(group) and (answered == 0 or not clean_exit):  # it died inside a program: blame it
        cpu_used = usage.ru_utime + usage.ru_stime
        blame = _death_report(ctx, wait_status, cpu_used, len(group), wall_killed, oversized)
        _write_all(1, json.dumps(blame).encode() + b"\n")
        answered += 1
    return answered


def _checked_line(line: bytes) -> bytes:
    with contextlib.suppress(ValueError):
        if _is_wire_result(json.loads(line)):
            return line
    return json.dumps(["killed", None, "the program process sent a malformed report", ""]).encode()


def _death_report(ctx: _WorkerContext, wait_status: int, cpu_used: float, programs: int, wall_killed: bool,
                  oversized: bool) -> list[Any]:
    if oversized:
        return ["output_limit", None, "report larger than the output cap allows", ""]
    if wall_killed:
        return ["timeout", None, f"wall-clock limit of {ctx.timeout_s:g} s", ""]
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        # SIGPROF: the ITIMER_PROF limit; SIGKILL at RLIMIT_CPU (soft == hard) if SIGPROF was ignored
        if signum == signal.SIGPROF or (signum == signal.SIGKILL and cpu_used >= _cpu_backstop(ctx, programs) - 0.05):
            return ["timeout", None, f"CPU limit of {ctx.cpu_s:g} s", ""]
        return ["killed", None, f"killed by {signal.Signals(signum).name}", ""]
    return ["killed", None, f"exited with code {os.waitstatus_to_exitcode(wait_status)} before reporting", ""]


def _cpu_backstop(ctx: _WorkerContext, programs: int) -> int:
    # RLIMIT_CPU counts whole seconds over the child's life: one second past its programs' CPU limits.
    return math.ceil(ctx.cpu_s * programs) + 1


# ---------------------------------------------------------------- child process

def _child_main(ctx: _WorkerContext, group: list[list[Any]], report_fd: int) -> NoReturn:
    stdout = stderr = None

    def report(status: str, value: str | None = None, detail: str = "", last: bool = True) -> None:
        try:  # even if a program closed the report descriptor, it stops when `last`
            printed = stdout.getvalue() if stdout else ""
            _write_all(_REPORT_FD, json.dumps([status, value, detail[:_MAX_DETAIL_CHARS], printed]).encode() + b"\n")
        finally:
            if last:
                os._exit(0)

    def overflow() -> None:  # never returns: report(last=True) exits
        report("output_limit", None, f"printed more than {ctx.max_output_bytes} bytes")

    try:
        _confine(ctx, report_fd, len(group))
        sys.stdin = sys.__stdin__ = None  # type: ignore[assignment]
        for name in [n for n in sys.modules if n in _DENIED_IMPORTS or n.startswith("ctypes.")]:
            del sys.modules[name]
        hook = _audit_hook(ctx, report)
    except BaseException as exc:  # a sandbox bug or an unusual kernel: say so rather than a bare "killed"
        with contextlib.suppress(OSError):
            report("killed", None, f"sandbox setup failed: {exc!r}", last=False)
        os._exit(_SETUP_FAILED_EXIT)
    sys.addaudithook(hook)  # cannot be removed for the rest of this process
    try:
        for code, entry in group:
            stdout, stderr = _CappedOutput(ctx.max_output_bytes, overflow), _CappedOutput(ctx.max_output_bytes, overflow)
            sys.stdout = sys.__stdout__ = stdout  # type: ignore[assignment]
            sys.stderr = sys.__stderr__ = stderr  # type: ignore[assignment]
            signal.setitimer(signal.ITIMER_PROF, ctx.cpu_s)  # default action of SIGPROF: terminate
            status, value, detail = _execute(code, entry, ctx)
            signal.setitimer(signal.ITIMER_PROF, 0)
            report(status, value, detail, last=status not in _REUSABLE)
    finally:
        os._exit(0)


def _confine(ctx: _WorkerContext, report_fd: int, programs: int) -> None:
    os.setpgid(0, 0)  # own group for killpg; not setsid, whose scheduler autogroup costs ~3 ms a child
    for fd in (0, 1, 2):  # the worker's protocol pipes are 0 and 1: never reachable from a program
        os.dup2(ctx.devnull, fd)
    os.dup2(report_fd, _REPORT_FD)
    os.closerange(_REPORT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    os.umask(0o077)
    for limit, value in ((resource.RLIMIT_AS, ctx.address_space), (resource.RLIMIT_NPROC, 1),
                         (resource.RLIMIT_CPU, _cpu_backstop(ctx, programs)), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_FSIZE, _SCRATCH_FILE_BYTES), (resource.RLIMIT_NOFILE, _OPEN_FILES)):
        resource.setrlimit(limit, (value, value))
    if ctx.child_user is not None:
        _drop_privileges(ctx, *ctx.child_user)
    _check(ctx.libc["prctl"](_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))  # after setuid, which clears it
    if os.getppid() != ctx.pid:  # the worker died before PDEATHSIG was armed
        os._exit(_SETUP_FAILED_EXIT)


def _drop_privileges(ctx: _WorkerContext, uid: int, gid: int) -> None:
    # RLIMIT_NPROC never applies to uid 0, so a root child must become someone else. Under Landlock it
    # keeps CAP_DAC_READ_SEARCH alone: `nobody` can then import from an interpreter installed in a
    # private home (pyenv under /root) while Landlock still limits reads to the import paths.
    keep_read = ctx.landlock_abi > 0
    if keep_read:
        _check(ctx.libc["prctl"](_PR_SET_KEEPCAPS, 1, 0, 0, 0))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if keep_read:
        caps = struct.pack("=6I", _CAP_DAC_READ_SEARCH, _CAP_DAC_READ_SEARCH, 0, 0, 0, 0)
        _check(ctx.libc["capset"](struct.pack("=Ii", _CAPABILITY_VERSION_3, 0), caps))


class _CappedOutput:
    """sys.stdout/sys.stderr of a program: kept in memory; past `limit` bytes the program is stopped."""

    def __init__(self, limit: int, on_overflow: Callable[[], None]) -> None:
        self._limit, self._size, self._parts = limit, 0, list[str]()
        self._on_overflow = on_overflow

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._size += len(text.encode("utf-8", "surrogatepass"))
        if self._size > self._limit:
            self._on_overflow()
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        return None

    def getvalue(self) -> str:
        return "".join(self._parts)[:self._limit]


def _audit_hook(ctx: _WorkerContext, report: Callable[..., None]) -> Callable[[str, tuple[Any, ...]], None]:
    scratch_prefix = ctx.scratch + os.sep
    read_prefixes = tuple(root + os.sep for root in ctx.read_roots)
    writes = 0

    def check_path(event: str, path: Any, write: bool) -> None:
        nonlocal writes
        if type(path) is int:  # a descriptor, opened earlier under this same policy
            return
        if path is None:
            path = "."
        if type(path) in (str, bytes):
            text = os.fsdecode(path)
        elif type(path) in (PosixPath, PurePosixPath):  # exact types: a custom __fspath__ could lie later
            text = str(path)
        else:
            report("forbidden", None, f"{event} with a {type(path).__name__} path")
        real = os.path.realpath(text)
        if real == ctx.scratch or real.startswith(scratch_prefix):
            writes += write
            if writes > _MAX_SCRATCH_WRITES:
                report("forbidden", None, f"more than {_MAX_SCRATCH_WRITES} writes in the scratch directory")
            return
        if not write and (real in ctx.read_roots or real.startswith(read_prefixes)):
            return
        report("forbidden", None, f"{event}: {'write to' if write else 'read of'} {text!r} outside scratch")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            check_path(event, args[0], bool(args[2] & _WRITE_FLAGS))
        elif event in _PATH_EVENTS:
            write, paths, dir_fds = _PATH_EVENTS[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                report("forbidden", None, f"{event} relative to a directory descriptor")
            for i in paths:
                check_path(event, args[i], write)
        elif event == "import":
            if args[0].partition(".")[0] in _DENIED_IMPORTS:
                report("forbidden", None, f"import {args[0]}")
        elif event in _DENIED_EVENTS or event.startswith(_DENIED_PREFIXES):
            report("forbidden", None, event)

    return hook


def _execute(code: str, entry: str | None, ctx: _WorkerContext) -> tuple[str, str | None, str]:
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        if entry is None:
            tree = ast.parse(code, "<program>")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            body = compile(tree, "<program>", "exec")
            tail = compile(ast.Expression(last.value), "<program>", "eval") if last else None
        else:
            body, tail = compile(code, "<program>", "exec"), None
    except (SyntaxError, ValueError, RecursionError) as exc:  # ValueError: NUL bytes; RecursionError: nesting
        return "syntax_error", None, _describe(exc)
    except MemoryError:
        return "memory", None, f"MemoryError while compiling (limit {ctx.address_space >> 20} MiB)"
    try:
        exec(body, namespace)
        if entry is None:
            if tail is None:
                return "no_result", None, "the last statement is not an expression"
            value = eval(tail, namespace)
        else:
            function = namespace.get(entry)
            if not callable(function):
                return "no_result", None, f"no function named {entry!r}"
            value = function()
        if value is None:
            return "no_result", None, "the value is None"
        return "ok", str(value)[:_MAX_VALUE_CHARS], ""
    except MemoryError:
        return "memory", None, f"MemoryError (address-space limit {ctx.address_space >> 20} MiB)"
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are program errors here too
        return "exec_error", None, _describe(exc)


def _describe(exc: BaseException) -> str:
    try:
        message = str(exc).strip()
    except BaseException:  # a hostile __str__ must not hide the exception type
        message = "<unprintable message>"
    return f"{type(exc).__name__}: {message.splitlines()[0]}"[:_MAX_DETAIL_CHARS] if message else type(exc).__name__
