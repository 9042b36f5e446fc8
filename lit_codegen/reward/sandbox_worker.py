"""Sandbox worker ("zygote"): a long-lived, pre-imported process that forks one sandboxed child per test.

The evaluator starts one worker per CPU as ``python -I sandbox_worker.py`` with a clean environment and
talks to it over its stdin/stdout pipes (length-prefixed pickles, see :func:`send_message`). The worker
is trusted code; the candidate program only ever runs in a forked child that:

- sits in its own session (process group), with CPU-time, address-space, file-size, open-file and
  process-count rlimits, a wall-clock timeout enforced from outside, and ``PR_SET_PDEATHSIG``;
- when the worker runs as root: runs as a worker-unique unprivileged uid (so ``RLIMIT_NPROC`` binds and
  it cannot signal or ptrace anything else), inside the worker's empty network namespace and private
  mount namespace (size-limited tmpfs on ``/tmp``, ``/var/tmp``, ``/dev/shm``; the home directory is
  hidden except the Python installation);
- when the kernel has Landlock: may write only below its scratch directory, may read only system and
  Python directories, may not bind/connect TCP sockets and may not signal processes outside its sandbox.

The child gets the test's *input* only; expected outputs never reach this process. It writes what the
program printed (stdin/stdout problems) or the JSON of the returned value (call-based problems) to
memory files that the worker reads back with ``pread`` and returns to the evaluator, which compares.
After every test the worker kills and reaps every process the test left behind (it is a child
subreaper, so double-forked daemons come back to it).

This module uses the standard library only and has no side effects at import time.
"""

import atexit
import builtins
import ctypes
import errno
import fcntl
import gc
import io
import json
import math
import os
import pickle
import resource
import select
import shutil
import signal
import stat
import struct
import sys
import sysconfig
import tempfile
import threading
import types

# ----------------------------------------------------------------------------------------------------------------------
# Protocol between evaluator and worker: 8-byte little-endian length, then a pickle.
_HEADER = struct.Struct("<Q")


def send_message(fd: int, obj) -> None:
    """Write one length-prefixed pickle to a file descriptor.

    Args:
        fd: an open, writable file descriptor (a pipe).
        obj: any picklable object.
    """
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (containers, strings, bytes, numbers): a forged message cannot run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: messages carry plain data only")


def receive_message(fd: int):
    """Read one length-prefixed pickle of plain data; returns None at end of file.

    Args:
        fd: an open, readable file descriptor (a pipe).

    Returns:
        The unpickled object, or None when the other side closed the pipe.

    Raises:
        pickle.UnpicklingError: the message names a class or function (never sent by this protocol).
    """
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    data = _read_exact(fd, _HEADER.unpack(header)[0])
    return None if data is None else _PlainUnpickler(io.BytesIO(data)).load()


# ----------------------------------------------------------------------------------------------------------------------
# Exit codes the trusted wrapper in the child uses to report how the program ended.
EXIT_OK = 0
EXIT_RUNTIME_ERROR = 101
EXIT_COMPILE_ERROR = 102
EXIT_MEMORY_ERROR = 103
EXIT_OUTPUT_LIMIT = 104
EXIT_NOT_JSON = 105
EXIT_SETUP_FAILED = 106
EXIT_NONZERO_EXIT = 107  # a standard-input program called sys.exit(non-zero) after printing (its output is kept)

# The imports the APPS reference harness puts in front of every program (LeetCode starter code uses
# `List` without importing it); numpy is added when it is installed.
APPS_HEADER = """\
import sys
import time
import itertools
from itertools import accumulate, product, permutations, combinations
import collections
from collections import Counter, OrderedDict, deque, defaultdict, ChainMap
from functools import lru_cache
import math
from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2
import fractions
from typing import List, Tuple
import random
import heapq
from heapq import *
"""

# Modules imported once in the worker so that a forked child starts with them warm.
PREIMPORTS = (
    "array bisect collections copy dataclasses datetime decimal enum fractions functools heapq itertools json "
    "math operator random re statistics string sys time typing unittest.mock"
).split()

# Linux constants (x86-64 and arm64 share these).
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
LL_FS_V1 = (1 << 13) - 1
LL_REFER, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1 << 0, 1 << 1
LL_SCOPE_ABSTRACT_UNIX_SOCKET, LL_SCOPE_SIGNAL = 1 << 0, 1 << 1
SANDBOX_UID_BASE = 1_900_000_000
READABLE_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/dev", "/proc")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _high_fd(fd: int) -> int:
    """Move a descriptor to 10 or above, out of the way of the 0-3 the sandboxed child uses."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _others_can_enter(path: str) -> bool:
    """True when a process of an unrelated uid can traverse every directory on the way to ``path``."""
    parts = os.path.abspath(path).split("/")
    for i in range(1, len(parts) + 1):
        try:
            mode = os.stat("/".join(parts[:i]) or "/").st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _python_dirs() -> list[str]:
    """Directories the interpreter may read modules from (stdlib, site-packages, the prefixes' lib dirs)."""
    paths = sysconfig.get_paths()
    dirs = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += [os.path.join(p, "lib") for p in (sys.base_prefix, sys.prefix)]
    dirs = sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})
    return [d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs)]


class Sandbox:
    """The worker's state: detected protections, scratch directory, memory files, sandbox uid.

    Args:
        timeout: per-test wall-clock limit in seconds.
        memory_mb: address space a test may allocate on top of the pre-imported interpreter.
        output_limit_mb: most bytes a test may print (or return as JSON).
        max_processes: process/thread cap per test (binds via the sandbox uid).
        isolation: "full" uses everything this machine allows; "none" only rlimits and timeouts.
    """

    def __init__(
        self, timeout: float, memory_mb: int, output_limit_mb: int, max_processes: int, isolation: str = "full"
    ):
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.output_limit = output_limit_mb << 20
        self.max_processes = max_processes
        self.pid = os.getpid()
        self.protections = [
            "separate process per test (forked from a pre-imported worker), own process group",
            f"wall-clock timeout {timeout:g}s per test and CPU-time rlimit",
            f"address-space rlimit {memory_mb} MiB above the interpreter baseline",
            f"output cap {output_limit_mb} MiB (RLIMIT_FSIZE on in-memory output files)",
            "expected outputs never enter the sandbox; comparison in the evaluator process",
        ]
        full = isolation == "full"
        root = os.geteuid() == 0
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.protections.append("child subreaper: leftover processes are killed and reaped after every test")
        # not dumpable: /proc/<worker>/ belongs to root, so a test running under the same uid cannot open the
        # worker's pipes through /proc/<pid>/fd (or read its memory); the children inherit it
        _prctl(PR_SET_DUMPABLE, 0)
        if full and root and self._try_unshare(CLONE_NEWNET):
            self.protections.append("network: empty network namespace (no interfaces but a down loopback)")
        self.mount_namespace = full and root and self._setup_mounts()
        if self.mount_namespace:
            self.protections.append(
                "filesystem: private mount namespace, size-limited tmpfs on /tmp, /var/tmp, "
                "/dev/shm; non-public home directories hidden"
            )
        self.workdir = self._make_workdir()
        self.uid = None
        if full and root and all(_others_can_enter(d) for d in _python_dirs()):
            self.uid = SANDBOX_UID_BASE + self.pid
            os.chown(self.workdir, self.uid, self.uid)
            self.protections.append(
                f"unprivileged uid {self.uid} per worker: RLIMIT_NPROC={max_processes} binds, "
                "cannot signal/ptrace other processes, no root-owned files writable"
            )
        elif root:
            self.protections.append(f"RUNNING AS ROOT without uid drop: RLIMIT_NPROC={max_processes} does not bind")
        else:
            self.protections.append(
                f"RLIMIT_NPROC = the uid's running tasks + {max_processes} (non-root: the limit counts the whole uid)"
            )
        self.tasks_before = 0  # tasks the uid already runs, added to RLIMIT_NPROC when tests share the uid
        self.landlock_fd = self._landlock_ruleset() if full else None
        self._preimport()
        self.header_globals = {}
        exec(compile(APPS_HEADER, "<apps-header>", "exec"), self.header_globals)
        if "numpy" in sys.modules:
            self.header_globals["np"] = sys.modules["numpy"]
        gc.collect()
        gc.freeze()  # the pre-imported objects are permanent: a test's garbage collection never walks (or copies) them
        self.baseline_vm = self._vm_size()
        self.log_fd = _high_fd(os.dup(2))
        self.devnull = _high_fd(os.open(os.devnull, os.O_RDWR))
        self.stdin_fd = _high_fd(os.memfd_create("stdin"))
        self.stdout_fd = _high_fd(os.memfd_create("stdout"))
        self.result_fd = _high_fd(os.memfd_create("result"))

    # -- setup ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def _try_unshare(flags: int) -> bool:
        return _libc.unshare(flags) == 0

    def _setup_mounts(self) -> bool:
        """Private mount namespace: fresh tmpfs for scratch space, hide home directories, keep Python readable."""
        if not self._try_unshare(CLONE_NEWNS):
            return False
        # handles to the Python directories, taken inside the new namespace (bind sources must live in it)
        keep = {d: os.open(d, os.O_PATH | os.O_CLOEXEC) for d in _python_dirs()}
        try:
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            for target, size in (("/tmp", "512m"), ("/var/tmp", "64m"), ("/dev/shm", "64m")):
                if os.path.isdir(target):
                    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
            for home in ("/root", "/home"):
                if os.path.isdir(home):
                    _mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
            for path, fd in keep.items():  # re-expose Python installations hidden by the mounts above
                if not os.path.isdir(path) or not _others_can_enter(path):
                    os.makedirs(path, mode=0o755, exist_ok=True)
                    _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            return True
        except OSError as exc:
            print(f"sandbox_worker: mount namespace setup failed ({exc}); continuing without it", file=sys.stderr)
            return False
        finally:
            for fd in keep.values():
                os.close(fd)

    def _make_workdir(self) -> str:
        """The tests' scratch folder, inside a folder of the worker's that the tests can enter but not change.

        So a test cannot replace its scratch folder (say, by a symlink for the next cleanup to follow); the scratch
        folder itself is emptied and given back its mode before every test, never re-created (Landlock's rule is
        bound to it).
        """
        self.scratch_parent = tempfile.mkdtemp(prefix="litcg-sandbox-", dir="/tmp" if os.path.isdir("/tmp") else None)
        os.chmod(self.scratch_parent, 0o711)
        workdir = os.path.join(self.scratch_parent, "work")
        os.mkdir(workdir, 0o700)
        return workdir

    def _landlock_ruleset(self) -> int | None:
        abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        if abi < 1:
            return None
        fs = LL_FS_V1 | (LL_REFER if abi >= 2 else 0) | (LL_TRUNCATE if abi >= 3 else 0)
        fs |= LL_IOCTL_DEV if abi >= 5 else 0
        attr = _RulesetAttr(
            fs,
            (LL_NET_BIND_TCP | LL_NET_CONNECT_TCP) if abi >= 4 else 0,
            (LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL) if abi >= 6 else 0,
        )
        size = 8 if abi < 4 else (16 if abi < 6 else 24)
        ruleset = _libc.syscall(
            SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
        )
        if ruleset < 0:
            return None
        ruleset = _high_fd(ruleset)
        read = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
        rules = [(d, read) for d in (*READABLE_SYSTEM_DIRS, *_python_dirs()) if os.path.exists(d)]
        rules += [(self.workdir, fs), (os.devnull, LL_READ_FILE | LL_WRITE_FILE)]
        for path, access in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(access, fd)
                _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), f"landlock {path}")
            finally:
                os.close(fd)
        text = f"Landlock ABI {abi}: writes only in the scratch dir, reads only system and Python dirs"
        if abi >= 4:
            text += ", TCP bind/connect denied"
        if abi >= 6:
            text += ", cannot signal processes or reach abstract unix sockets outside the sandbox"
        self.protections.append(text)
        return ruleset

    @staticmethod
    def _preimport() -> None:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        import importlib

        for name in PREIMPORTS + ["numpy"]:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - numpy is optional
                pass

    @staticmethod
    def _vm_size() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        return 0

    # -- running tests -------------------------------------------------------------------------------------------------
    def run_program(self, source: str, fn_name: str | None, inputs: list) -> list[tuple[str, bytes | None]]:
        """Run one program on several test inputs, one sandboxed child per input.

        Args:
            source: the candidate program.
            fn_name: the function to call for call-based problems, None for stdin/stdout problems.
            inputs: per test, the stdin text (str) or the argument list (list).

        Returns:
            Per test ``(status, payload)``: status is ok / timeout / runtime_error / compile_error /
            memory_limit / output_limit; payload is the printed bytes (stdin problems) or the JSON of the
            returned value (call-based; None when it was not JSON-serialisable).
        """
        if self.uid is None and os.geteuid() != 0:  # RLIMIT_NPROC counts every task of the trainer's uid
            self.tasks_before = _tasks_of_uid(os.getuid())
        results = []
        for test_input in inputs:
            if results and results[-1][0] == "compile_error":
                results.append(("compile_error", None))  # compiling is deterministic: no need to rerun
                continue
            results.append(self._run_test(source, fn_name, test_input))
        return results

    def _run_test(self, source: str, fn_name: str | None, test_input) -> tuple[str, bytes | None]:
        data = test_input.encode() if isinstance(test_input, str) else b""
        for fd in (self.stdin_fd, self.stdout_fd, self.result_fd):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        if data:
            os.pwrite(self.stdin_fd, data, 0)
        self._clean_workdir()
        cpu_limit = math.ceil(self.timeout) + 1
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = EXIT_SETUP_FAILED
            try:
                self._enter_sandbox(cpu_limit)
                code = _execute(source, fn_name, test_input, self.header_globals)
            except BaseException as exc:  # noqa: BLE001 - report sandbox setup failures on the worker's stderr
                try:
                    os.write(self.log_fd, f"sandbox_worker: test setup failed: {exc!r}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        try:
            timed_out = not select.select([pidfd], [], [], self.timeout)[0]
        finally:
            os.close(pidfd)
        if timed_out:
            if os.environ.get("LITCG_SANDBOX_DEBUG"):
                self._describe(pid)
            os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        self._kill_leftovers(pid)
        out_fd = self.stdout_fd if fn_name is None else self.result_fd
        size = max(os.fstat(self.stdout_fd).st_size, os.fstat(self.result_fd).st_size)
        if timed_out:
            return "timeout", None
        if size > self.output_limit:
            return "output_limit", None
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or usage.ru_utime + usage.ru_stime >= cpu_limit - 0.1:
                return "timeout", None
            if sig == signal.SIGXFSZ:
                return "output_limit", None
            if usage.ru_maxrss * 1024 >= self.baseline_vm + (self.memory_mb << 20) * 0.9:
                return "memory_limit", None
            return "runtime_error", None
        code = os.WEXITSTATUS(status)
        if code == EXIT_OK:
            return "ok", os.pread(out_fd, os.fstat(out_fd).st_size, 0)
        if code == EXIT_NOT_JSON and fn_name is not None:
            return "ok", None
        if code == EXIT_NONZERO_EXIT and fn_name is None:  # the evaluator decides by mode: apps compares the output
            return "exited", os.pread(out_fd, os.fstat(out_fd).st_size, 0)
        return {
            EXIT_COMPILE_ERROR: "compile_error",
            EXIT_MEMORY_ERROR: "memory_limit",
            EXIT_OUTPUT_LIMIT: "output_limit",
        }.get(code, "runtime_error"), None

    def _describe(self, pid: int) -> None:
        """Debugging aid (LITCG_SANDBOX_DEBUG=1): log where a timed-out test is stuck."""
        try:
            with open(f"/proc/{pid}/status") as f:
                state = [line.strip() for line in f if line.startswith(("State", "Uid", "Threads", "VmRSS"))]
            with open(f"/proc/{pid}/wchan") as f:
                state.append("wchan " + f.read())
            with open(f"/proc/{pid}/stat") as f:
                state.append("utime/stime " + " ".join(f.read().rsplit(")", 1)[1].split()[11:13]))
            os.write(self.log_fd, f"sandbox_worker: timeout in {pid}: {state}\n".encode())
        except OSError as exc:
            os.write(self.log_fd, f"sandbox_worker: timeout in {pid}: {exc}\n".encode())

    def _enter_sandbox(self, cpu_limit: int) -> None:
        """In the forked child: new session, fds, rlimits, Landlock, unprivileged uid. Order matters."""
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.pid:
            os._exit(EXIT_SETUP_FAILED)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(self.stdin_fd, 0)
        os.dup2(self.stdout_fd, 1)
        os.dup2(self.devnull, 2)
        os.dup2(self.result_fd, 3)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.landlock_fd is not None:
            _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, self.landlock_fd, 0), "landlock_restrict_self")
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        os.chdir(self.workdir)
        address_space = self.baseline_vm + (self.memory_mb << 20)
        limits = {
            resource.RLIMIT_CPU: (cpu_limit, cpu_limit + 1),
            resource.RLIMIT_AS: (address_space,) * 2,
            resource.RLIMIT_FSIZE: (self.output_limit + 1,) * 2,
            resource.RLIMIT_NPROC: (self.tasks_before + self.max_processes,) * 2,
            resource.RLIMIT_CORE: (0, 0),
            resource.RLIMIT_NOFILE: (256, 256),
        }
        for which, value in limits.items():
            resource.setrlimit(which, value)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
        os.environ["HOME"] = os.environ["TMPDIR"] = self.workdir

    def _kill_leftovers(self, pid: int) -> None:
        """Kill and reap everything the test started: its process group, the sandbox uid, any reparented orphan."""
        children_file = f"/proc/self/task/{self.pid}/children"
        for attempt in range(10_000):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            if self.uid is not None:
                self._kill_sandbox_uid()
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return  # no children left at all
            try:
                with open(children_file) as f:
                    for child in f.read().split():
                        try:
                            os.kill(int(child), signal.SIGKILL)
                        except OSError:
                            pass
            except OSError:
                pass
            if attempt:
                select.select([], [], [], 0.001)

    def _kill_sandbox_uid(self) -> None:
        # Become the sandbox uid for one kill(-1): that signals exactly the processes of this uid, nothing else
        # (the saved uid stays 0, so root can be restored right after).
        os.setresuid(self.uid, self.uid, 0)
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.setresuid(0, 0, 0)

    def _clean_workdir(self) -> None:
        """Empty the scratch folder and restore its mode (a test may have made it, or folders in it, read-only)."""
        os.chmod(self.workdir, 0o700)
        with os.scandir(self.workdir) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(entry.path)
                else:
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass

    def close(self) -> None:
        """Remove the scratch folder and its parent."""
        _remove_tree(self.scratch_parent)


def _remove_tree(path: str) -> None:
    """Delete a folder a test left behind, also when the test took the permissions away from folders in it.

    Runs only when every process of the test is gone, so nothing can swap a folder for a symlink meanwhile; symlinks
    are never followed.
    """
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    for folder, subfolders, _ in os.walk(path):  # top-down: each folder is opened up before os.walk lists it
        for name in subfolders:
            sub = os.path.join(folder, name)
            try:
                if not os.path.islink(sub):
                    os.chmod(sub, 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def _tasks_of_uid(uid: int) -> int:
    """Processes and threads whose real uid is ``uid``: what ``RLIMIT_NPROC`` counts."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("Uid:", "Threads:")))
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            pass  # the process ended meanwhile
    return count


# ----------------------------------------------------------------------------------------------------------------------
# The trusted wrapper that runs inside the sandboxed child.
def _execute(source: str, fn_name: str | None, test_input, header_globals: dict) -> int:
    """Run the candidate once and return the exit code for the worker. Runs in the sandboxed child."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False), 1 << 16), encoding="utf-8")
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = sys.__stdout__ = stdout
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8")
    sys.argv = ["solution.py"]
    atexit._clear()  # only the program's own exit handlers run at its end, not the worker's
    module = types.ModuleType("__main__" if fn_name is None else "solution")
    module.__dict__.update(header_globals)
    module.__builtins__ = builtins
    sys.modules[module.__name__] = module
    code = _compile(source, fn_name is None)
    if code is None:
        return EXIT_COMPILE_ERROR
    payload = None
    try:
        try:
            exec(code, module.__dict__)
            if "__apps_main__" in module.__dict__ and code.co_filename == "solution_wrapped.py":
                module.__apps_main__()
        except SystemExit as exc:
            if fn_name is not None:
                return EXIT_RUNTIME_ERROR
            if exc.code not in (None, 0):
                _finish_like_python(module, stdout)  # what it printed counts in apps mode, as in the reference
                return EXIT_NONZERO_EXIT
        if fn_name is not None:
            result = _resolve_function(module, fn_name, source)(*test_input)
            try:
                payload = json.dumps(result, default=_numpy_to_json).encode()
            except (TypeError, ValueError, RecursionError):
                return EXIT_NOT_JSON
        _finish_like_python(module, stdout)
        if payload is not None:
            view = memoryview(payload)
            while view:
                view = view[os.write(3, view) :]
    except MemoryError:
        return EXIT_MEMORY_ERROR
    except OSError as exc:
        return EXIT_OUTPUT_LIMIT if exc.errno == errno.EFBIG else EXIT_RUNTIME_ERROR
    except SystemExit as exc:
        return EXIT_OK if exc.code in (None, 0) and fn_name is None else EXIT_RUNTIME_ERROR
    except BaseException:  # noqa: BLE001 - any exception of the candidate is a runtime error
        return EXIT_RUNTIME_ERROR
    return EXIT_OK


def _numpy_to_json(value):
    """NumPy scalars and arrays as the Python values they hold (`np.int64(3)` -> 3), as the reference's `==` sees them.

    The programs get `np` from the APPS import header, so returning `np.int64` is common; anything else stays
    unserialisable (a `TypeError`, reported as `EXIT_NOT_JSON`).
    """
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finish_like_python(module: types.ModuleType, stdout: io.TextIOWrapper) -> None:
    """What the interpreter does when a program ends: join threads, run atexit handlers, flush, free the globals.

    So programs that print from an atexit handler (a common fast-output idiom), leave a file on fd 1 unclosed, print
    in ``__del__`` or close or detach ``sys.stdout`` behave as under ``python solution.py``.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    _flush(sys.stdout, stdout)
    for name in reversed(list(module.__dict__)):  # newest first, so a finaliser still finds the older globals
        if name != "__builtins__":
            del module.__dict__[name]  # finalisers run, unclosed files flush
    gc.collect()
    _flush(sys.stdout, stdout)


def _flush(*streams) -> None:
    """Flush each distinct stream that is still open (a program may have closed or detached it)."""
    for stream in {id(s): s for s in streams}.values():
        try:
            stream.flush()
        except ValueError:  # closed or detached: what it held was written when it was closed
            pass


def _compile(source: str, stdin_program: bool):
    """Compile the program; None on a compile error.

    One fallback, for standard-input programs only: a program that does not compile as a module but does compile
    as the APPS harness compiles every standard-input program (:func:`apps_function_form`) is run in that form. It
    covers a top-level ``return``, ``nonlocal`` in module-level functions for module-level names, a top-level
    ``yield``; inside the function, ``global`` then means the real module globals, as in the harness. A program
    that compiles as a module always runs as one. Call-based programs are never wrapped (nor are they in the harness).
    """
    try:
        return compile(source, "solution.py", "exec")
    except SyntaxError:
        if not stdin_program:
            return None
    except (ValueError, OverflowError, RecursionError, MemoryError):
        return None
    try:
        return compile(apps_function_form(source), "solution_wrapped.py", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return None


def apps_function_form(source: str) -> str:
    """A standard-input program rewritten as the APPS harness runs it: the body of a function ``__apps_main__``.

    As in hendrycks/apps ``eval/testing_util.py``: the program is split at newlines; the leading lines that start
    with ``import `` or ``from `` stay at module level; every later line is indented by one tab (also lines inside
    multi-line strings); the module gets ``stdin = sys.stdin`` and ``stdout = sys.stdout``. The caller calls
    ``__apps_main__()`` after executing the module (the harness's function is called ``code``).

    Args:
        source: the program.

    Returns:
        The rewritten source.
    """
    head, body = [], []
    for line in source.split("\n"):
        if not body and line.startswith(("import ", "from ")):
            head.append(line)
        else:
            body.append("\t" + line)
    return "\n".join([*head, "stdin = sys.stdin", "stdout = sys.stdout", "def __apps_main__():", *body]) + "\n"


def _resolve_function(module: types.ModuleType, fn_name: str, source: str):
    """The callable for a call-based test: ``Solution().fn_name`` for LeetCode-style code, else a module function."""
    solution = module.__dict__.get("Solution")
    if "class Solution" in source and isinstance(solution, type) and hasattr(solution, fn_name):
        return getattr(solution(), fn_name)
    return module.__dict__[fn_name]


# ----------------------------------------------------------------------------------------------------------------------
def main() -> None:
    """Worker entry point: set up the sandbox, then serve requests from the evaluator until stdin closes."""
    requests = os.dup(0)
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    config = receive_message(requests)
    if config is None:
        return
    sandbox = Sandbox(**config)
    send_message(replies, {"pid": os.getpid(), "protections": sandbox.protections})
    try:
        while (request := receive_message(requests)) is not None:
            send_message(replies, sandbox.run_program(request["source"], request["fn_name"], request["inputs"]))
    except BrokenPipeError:
        pass
    finally:
        sandbox.close()


if __name__ == "__main__":
    main()
