"""The worker and child side of the sandbox: confine a process, then run generated programs in it.

This code runs inside every sandbox worker (started by echochamber.verify.sandbox as
`python -I -B -c "from echochamber.verify.confine import _worker_main ..."`) and in the children it
forks; the pool side never calls it directly. It is a module of its own so a worker imports only
what it needs (no subprocess, threads or selectors: a smaller heap to fork) and so the parts that
make the boundary (layers 2-4 in sandbox's docstring) can be read in one place:
- worker: a network namespace, a Landlock file policy, then a loop that forks one child per group;
  it enforces the wall clock and turns each child's death into a status.
- child: its own process group, rlimits, uid `nobody` when root, PDEATHSIG, an audit hook, then the
  programs, each under an ITIMER_PROF CPU limit with capped in-memory output.
Both sides speak one wire format: a JSON line `[status, value, detail, stdout]` per program.
Linux only.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import ctypes
import gc
import importlib
import json
import math
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PosixPath, PurePosixPath
from typing import Any, NoReturn

# A program's outcome, ExecResult.status (sandbox.py documents each); every report line is checked.
STATUSES = ("ok", "syntax_error", "exec_error", "no_result", "timeout", "memory", "killed",
            "output_limit", "forbidden")
# Run once in a worker that preloads the module, so children inherit what it builds lazily on first
# use (imports inside functions, caches): a child's first solve() costs ~90 ms CPU cold, ~20 warm.
_WARMUPS = {"sympy": "import sympy\nx = sympy.symbols('x')\nsympy.solve(x**2 - 4, x)\nsympy.simplify((x**2 - 1) / (x - 1))\n"
                     "sympy.factor(x**2 - 1)\nsympy.expand((x + 1)**3)\nsympy.nsimplify(0.5)\nsympy.N(sympy.pi)\n"
                     "sympy.Rational(1, 3) + sympy.sqrt(2)\nsympy.Eq(x, 1)\n"}

_MAX_VALUE_CHARS, _MAX_DETAIL_CHARS = 1000, 300
_SCRATCH_FILE_BYTES, _MAX_SCRATCH_WRITES, _OPEN_FILES = 4 << 20, 64, 32  # disk use per program <= 256 MiB
_REPORT_FD, _SETUP_FAILED_EXIT = 3, 70
_REUSABLE = frozenset({"ok", "syntax_error", "exec_error", "no_result"})  # a shared child goes on after these

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


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is out (a pipe may take less per call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def is_wire_result(message: Any) -> bool:
    """Whether a decoded line is a well-formed `[status, value, detail, stdout]` report."""
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
    write_all(1, json.dumps(ready).encode() + b"\n")
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
                    write_all(1, _checked_line(bytes(pending[:end])) + b"\n")
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
        write_all(1, json.dumps(blame).encode() + b"\n")
        answered += 1
    return answered


def _checked_line(line: bytes) -> bytes:
    with contextlib.suppress(ValueError):
        if is_wire_result(json.loads(line)):
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
            write_all(_REPORT_FD, json.dumps([status, value, detail[:_MAX_DETAIL_CHARS], printed]).encode() + b"\n")
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
