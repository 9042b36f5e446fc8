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
import importlib.util
import io
import json
import marshal
import math
import os
import pickle
import random
import re
import resource
import select
import signal
import stat
import struct
import sys
import sysconfig
import tempfile
import threading
import time
import types
import typing

# ----------------------------------------------------------------------------------------------------------------------
# Protocol between evaluator and worker: 8-byte little-endian length, then a pickle.
_HEADER = struct.Struct("<Q")
# Between the worker and its template: a test's pid, then how it ended (wait status, user and system CPU seconds,
# peak resident KiB).
_PID = struct.Struct("<q")
_REPORT = struct.Struct("<qddq")


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

# Programs that name numpy run in the template that has it imported (a word ``np`` or ``numpy`` anywhere: a variable
# called ``np`` only costs the dearer fork).
_NAMES_NUMPY = re.compile(r"\bnp\b|numpy")


def _lazy_numpy() -> types.ModuleType | None:
    """The numpy module, loading itself on first attribute access (`importlib.util.LazyLoader`); None without numpy.

    It is put in ``sys.modules``, and the template of the programs that do not name numpy binds ``np`` to it: a program
    that still reaches numpy (``globals()["np"]``, ``__import__("num" + "py")``) gets the real module, after ~0.1 s of
    importing.
    """
    spec = importlib.util.find_spec("numpy")
    if spec is None:
        return None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["numpy"] = module
    spec.loader.exec_module(module)
    return module


class _Template(typing.NamedTuple):
    """The worker's handle on a template.

    Its pid, the pipe that sends it commands and the one it reports on, the address space it started with, and
    whether its tests are the OOM killer's first choice.
    """

    pid: int
    commands: int
    reports: int
    baseline_vm: int
    oom_first: bool


# Modules imported once in the worker so that a forked child starts with them warm: what competitive programs import.
# Every module here makes every test's fork and exit dearer (page tables to copy and tear down), so nothing rare:
# unittest.mock, once here, brought asyncio, ssl, socket, subprocess and logging (~90 modules) for no program.
PREIMPORTS = (
    "array bisect collections copy dataclasses datetime decimal enum fractions functools heapq itertools json "
    "math operator random re statistics string sys time typing"
).split()

# Linux constants (x86-64 and arm64 share these).
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
IPC_RMID = 0
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
LL_FS_V1 = (1 << 13) - 1
LL_REFER, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1 << 0, 1 << 1
LL_SCOPE_ABSTRACT_UNIX_SOCKET, LL_SCOPE_SIGNAL = 1 << 0, 1 << 1
SANDBOX_UID_BASE = 1_900_000_000
# Without root the process limit is set above the tasks the trainer's uid already runs. Counting them reads every
# process's /proc status (~40 us each: 3 ms a program on a machine running 70 processes, tens of ms on a busy node),
# so a count is used for this many seconds.
TASK_COUNT_SECONDS = 1.0
READABLE_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/dev", "/proc")


# Seccomp: the system calls a test may not make. The numbers differ by architecture.
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
AF_INET, AF_INET6 = 2, 10
_SECCOMP_ARCH = {  # machine: (AUDIT_ARCH value, syscall numbers)
    "x86_64": (0xC000003E, {
        "socket": 41, "clone": 56, "unshare": 272, "clone3": 435, "ioctl": 16,
        "add_key": 248, "request_key": 249, "keyctl": 250,
        "io_uring_setup": 425, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "setxattrat": 463,
        "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
        "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452,
        "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260,
        "shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240,
        "prlimit64": 302, "sched_setaffinity": 203, "sched_setscheduler": 144, "sched_setparam": 142,
        "sched_setattr": 314, "setpriority": 141, "ioprio_set": 251,
    }),
    "aarch64": (0xC00000B7, {
        "socket": 198, "clone": 220, "unshare": 97, "clone3": 435, "ioctl": 29,
        "add_key": 217, "request_key": 218, "keyctl": 219,
        "io_uring_setup": 425, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "setxattrat": 463, "utimensat": 88,
        "fchmod": 52, "fchmodat": 53, "fchmodat2": 452, "fchown": 55, "fchownat": 54,
        "shmget": 194, "semget": 190, "msgget": 186, "mq_open": 180,
        "prlimit64": 261, "sched_setaffinity": 122, "sched_setscheduler": 119, "sched_setparam": 118,
        "sched_setattr": 274, "setpriority": 140, "ioprio_set": 30,
    }),
}
# Denied outright: the kernel keyring (keys outlive the test and are shared by the uid: a channel between
# programs), io_uring (can open sockets past the socket() rule), kernel interfaces no program needs, and setting file
# times (the scratch folder and the memory files outlive the test: their times would carry 128 bits each to the next
# test). Calls an architecture does not have (arm64 has no utime, chmod, chown...) are skipped.
_DENIED_SYSCALLS = (
    "add_key", "request_key", "keyctl", "io_uring_setup", "bpf", "perf_event_open", "userfaultfd",
    "utime", "utimes", "futimesat", "utimensat",
)
# Extended attributes (ACLs included) outlive the test on the same files, kilobytes of them: setting one fails with
# ENOTSUP, "not supported here", which copying code (shutil.copystat) already expects.
_XATTR_SYSCALLS = ("setxattr", "lsetxattr", "fsetxattr", "setxattrat")
# Inode flags (chattr: nodump, noatime, sync...) outlive the test too; the owner of a file may set some of them.
FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR = 0x40086602, 0x40046602, 0x401C5820
# Without a private IPC namespace (no root) System V objects and POSIX message queues are host-wide and outlive the
# test: creating or opening one is denied, so no test can reach an object another test left.
_HOST_IPC_SYSCALLS = ("shmget", "semget", "msgget", "mq_open")
# When the tests run as the trainer's uid (no root), they own the trainer's files, and Landlock does not cover a
# file's mode or group: those of any file would carry data to the next test, and `chmod 000` on a checkpoint folder
# would stop the trainer. Changing either is denied then.
_OWNER_SYSCALLS = ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat")
# Then they may also change the limits and scheduling of the trainer's processes (Landlock does not cover these
# calls): the template's, inherited by every later test (a channel), or the trainer's (`setpriority(PRIO_USER)` renices
# every process of the uid). Limits and scheduling of the test itself (pid 0) stay allowed; nice and I/O priority,
# whose targets include the whole uid, are denied.
_SELF_ONLY_SYSCALLS = ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")
_UID_WIDE_SYSCALLS = ("setpriority", "ioprio_set")


def _seccomp_filter(private_ipc: bool, own_uid: bool) -> ctypes.Structure | None:
    """A classic-BPF seccomp program for this architecture, or None where the numbers are not known.

    It fails with EPERM: the keyring, setting file times and the other calls in `_DENIED_SYSCALLS`; the ioctls
    that set inode flags; `socket()` of any family but IPv4/IPv6 (those reach only the empty network namespace; unix
    sockets could reach a host service through a visible socket file, vsock the hypervisor, netlink the kernel);
    `clone`/`unshare` asking for a new user namespace (the kernel attack surface most privilege escalations need);
    `clone` with ``CLONE_PARENT`` (a sibling of the test is a child of the template, which neither kills it nor reaps
    it: as a zombie it would count against the sandbox uid's process limit in every later test); without
    `private_ipc` (no IPC namespace of the worker's own), creating or opening System V IPC objects and POSIX message
    queues; without `own_uid` (tests run as the trainer's uid), changing any file's mode or owner, the limits or
    scheduling of another process (`prlimit64`, `sched_set*` with a pid) and nice or I/O priorities. Setting an
    extended attribute fails with ENOTSUP. `clone3` fails with ENOSYS, since its flags sit in memory a filter cannot
    read; the C library then falls back to `clone`. Foreign-ABI calls (32-bit, x32) fail too.
    """
    arch = _SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return None
    audit_arch, nr = arch
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JSET|K, BPF_RET|K
    eperm, enosys, allow = SECCOMP_RET_ERRNO | errno.EPERM, SECCOMP_RET_ERRNO | errno.ENOSYS, SECCOMP_RET_ALLOW
    enotsup = SECCOMP_RET_ERRNO | errno.ENOTSUP
    arg0, arg1 = 16, 24  # offsetof(struct seccomp_data, args[i]); their low 32 bits on a little-endian machine
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, eperm), (ld, 0, 0, 0)]
    if audit_arch == 0xC000003E:  # x32 system calls share the arch value, with bit 30 set in the number
        prog += [(0x35, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # BPF_JMP|JGE|K
    denied = _DENIED_SYSCALLS + (() if private_ipc else _HOST_IPC_SYSCALLS)
    denied += () if own_uid else _OWNER_SYSCALLS + _UID_WIDE_SYSCALLS
    for name, error in [(name, eperm) for name in denied] + [(name, enotsup) for name in _XATTR_SYSCALLS]:
        if name in nr:
            prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, error)]
    prog += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, enosys)]
    for name in () if own_uid else _SELF_ONLY_SYSCALLS:  # the pid is the first argument; 0 is the caller
        prog += [(jeq, 0, 4, nr[name]), (ld, 0, 0, arg0), (jeq, 1, 0, 0), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    prog += [(jeq, 0, 6, nr["ioctl"]), (ld, 0, 0, arg1)]  # the request is the second argument
    prog += [(jeq, 3, 0, FS_IOC_SETFLAGS), (jeq, 2, 0, FS_IOC32_SETFLAGS), (jeq, 1, 0, FS_IOC_FSSETXATTR)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    for name in ("clone", "unshare"):  # flags are the first argument of both (CLONE_PARENT is not one of unshare's)
        flags = CLONE_NEWUSER | CLONE_PARENT
        prog += [(jeq, 0, 4, nr[name]), (ld, 0, 0, arg0), (jset, 0, 1, flags), (ret, 0, 0, eperm)]
        prog += [(ret, 0, 0, allow)]
    prog += [(jeq, 0, 4, nr["socket"]), (ld, 0, 0, arg0), (jeq, 2, 0, AF_INET), (jeq, 1, 0, AF_INET6)]
    prog += [(ret, 0, 0, eperm)]
    prog += [(ret, 0, 0, allow)]

    class _Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class _Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]

    filters = (_Filter * len(prog))(*[_Filter(*insn) for insn in prog])
    program = _Program(len(prog), filters)
    program._keep = filters  # the array must outlive the structure that points at it
    return program


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
_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)  # its calls keep the GIL: fork() is then taken with it held


def _fork_single_threaded() -> int:
    """fork(2) without CPython's at-fork hooks, for the template (one thread). Returns the pid, 0 in the child.

    ``os.fork()`` runs the interpreter's fork hooks in both processes: they re-create the locks that other threads
    might hold (threading, logging, the import lock) and reseed ``random``. With one thread no lock can be held by
    another, so the hooks change nothing, but they run Python code that writes to ~200 pages the child shares with
    the template: a bare fork and exit of a process with the pre-imported modules measured 0.9 ms of the child's
    CPU with them and 0.3 ms without. The child reseeds ``random`` itself (:meth:`Sandbox._run_child`). The C
    library's own fork handlers (malloc, stdio) run as with ``os.fork()``.
    """
    if threading.active_count() != 1:  # the template never starts a thread; should one exist, take the safe path
        return os.fork()
    pid = _libc_holding_gil.fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


def _make_oom_first_choice() -> bool:
    """Set this process's `oom_score_adj` to 1000, which its children inherit; False where /proc does not allow it.

    The worker is not dumpable, and neither is a template forked from it, so their /proc files belong to root: without
    root the file opens only while the process is dumpable, which it is for the moment of the write (a template is
    started before any test exists).
    """
    _prctl(PR_SET_DUMPABLE, 1)
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        return True
    except OSError:
        return False
    finally:
        _prctl(PR_SET_DUMPABLE, 0)


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


def _open_as(path: str, target: int) -> None:
    """Open `path` for reading and writing as descriptor `target` (inheritable), in a new open file description."""
    fd = os.open(path, os.O_RDWR)
    if fd == target:
        os.set_inheritable(fd, True)
    else:
        os.dup2(fd, target)
        os.close(fd)


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


class _TestCgroup:
    """The cgroup this worker and its tests run in (root only): one memory limit and a fair CPU share per test.

    The memory limit covers all of a test's processes together, page cache, memfd and shared memory included: tests
    of one worker run one at a time, so the worker's group is the test's. The worker's own pages count too (they are
    part of the limit); its `oom_score_adj` is 0 against the tests' 1000, so the OOM killer picks a test.
    `RLIMIT_AS` binds per process only, and memfd or System V pages are outside it. Each worker's group has the
    default CPU weight, so a test that forks 31 busy processes gets its worker's share of the CPUs, not 31 shares.
    cgroup v1 (memory and cpu hierarchies) and v2 (unified, if the parent delegates memory and cpu) are supported;
    elsewhere there is no group and `RLIMIT_AS` is the only memory limit.

    Args:
        name: The group's folder name (unique per worker).
        memory_bytes: Memory limit of the group.
    """

    def __init__(self, name: str, memory_bytes: int):
        self.dirs: list[str] = []  # the worker's groups, one per hierarchy
        self.oom_file = None  # where the kernel counts the group's OOM kills (`oom_kill N`)
        paths = {}  # controller -> our cgroup path
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for controller in controllers.split(",") if controllers else [""]:
                    paths[controller] = path
        if os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):  # v2: one tree
            parent = "/sys/fs/cgroup" + paths.get("", "/")
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                if not {"memory", "cpu"} <= set(f.read().split()):
                    raise OSError("the parent cgroup does not delegate the memory and cpu controllers")
            group = self._make(parent, name)
            self._write(group, "memory.max", memory_bytes)
            self._write(group, "memory.swap.max", 0)
            self.oom_file = os.path.join(group, "memory.events")
        else:  # v1: one tree per controller
            memory = self._make(f"/sys/fs/cgroup/memory{paths['memory']}", name)
            self._write(memory, "memory.limit_in_bytes", memory_bytes)
            if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
                self._write(memory, "memory.memsw.limit_in_bytes", memory_bytes)  # and no swap on top
            self.oom_file = os.path.join(memory, "memory.oom_control")
            self._make(f"/sys/fs/cgroup/cpu{paths['cpu']}", name)

    def _make(self, parent: str, name: str) -> str:
        for stale in os.listdir(parent):  # groups of workers that died without closing
            if stale.startswith("litcg-") and stale[6:].isdigit() and not _alive(int(stale[6:])):
                try:
                    os.rmdir(os.path.join(parent, stale))
                except OSError:
                    pass
        group = os.path.join(parent, name)
        os.mkdir(group)
        self.dirs.append(group)
        return group

    @staticmethod
    def _write(group: str, knob: str, value: int) -> None:
        with open(os.path.join(group, knob), "w") as f:
            f.write(str(value))

    def raise_limit(self, memory_bytes: int) -> None:
        """Raise the memory limit (the worker sets it again once both templates are up)."""
        for group in self.dirs:
            # v1 refuses a memory limit above the memory + swap one: raise that first
            for knob in ("memory.max", "memory.memsw.limit_in_bytes", "memory.limit_in_bytes"):
                if os.path.exists(os.path.join(group, knob)):
                    self._write(group, knob, memory_bytes)

    def join(self) -> None:
        """Move the calling process (the worker) into the groups; the tests it forks start in them."""
        for group in self.dirs:
            self._write(group, "cgroup.procs", os.getpid())

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed so far."""
        with open(self.oom_file) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def close(self) -> None:
        """Leave the groups (for their parents) and remove them; the tests in them are gone by then."""
        for group in reversed(self.dirs):
            try:
                self._write(os.path.dirname(group), "cgroup.procs", os.getpid())
                os.rmdir(group)
            except OSError:
                pass


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
        self.ipc_namespace = full and root and self._try_unshare(CLONE_NEWIPC)
        self.mqueue_dir = None
        self.mount_namespace = full and root and self._setup_mounts()
        if self.mount_namespace:
            self.protections.append(
                "filesystem: private mount namespace, size-limited tmpfs on /tmp, /var/tmp, "
                "/dev/shm; non-public home directories, /run (host service sockets) and the installed lit_codegen "
                "package (its bundled problems) hidden; /proc shows a test only its own processes (hidepid); /dev "
                "holds null, zero, full, random, urandom and tty only (no GPU, disk or other device nodes)"
            )
        if self.ipc_namespace:
            self.protections.append(
                "IPC: private IPC namespace per worker; every System V segment, queue and semaphore set"
                + (" and POSIX message queue" if self.mqueue_dir else "")
                + " is removed after every test"
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
        self.seccomp = _seccomp_filter(private_ipc=self.ipc_namespace, own_uid=self.uid is not None) if full else None
        if self.seccomp is not None:
            self.protections.append(
                "seccomp: no kernel keyring, no new user namespaces, no CLONE_PARENT siblings, no sockets but "
                "IPv4/IPv6 (no unix, vsock or netlink), no io_uring, bpf, perf_event_open or userfaultfd; no file "
                "times, extended attributes or inode flags set (they outlive the test)"
                + ("" if self.ipc_namespace else "; no System V IPC objects or POSIX message queues (host-wide)")
                + ("" if self.uid is not None else "; no file's mode or owner changed (tests own the trainer's files), "
                   "no other process's limits, scheduling or priority changed")
            )
        self.tasks_before = 0  # tasks the uid already runs, added to RLIMIT_NPROC when tests share the uid
        self.tasks_counted_at = -math.inf
        self.landlock_fd = self._landlock_ruleset() if full else None
        self._preimport()
        self.header_globals = {}
        exec(compile(APPS_HEADER, "<apps-header>", "exec"), self.header_globals)
        numpy = _lazy_numpy()
        if numpy is not None:
            self.header_globals["np"] = numpy
        self._freeze()
        self.cgroup, self.oom_kills = None, 0
        if full and root:
            try:
                self.cgroup = _TestCgroup(f"litcg-{self.pid}", self._memory_limit())
                self.cgroup.join()  # the worker itself: tests are forked into it (moving each test costs ~ms)
            except (OSError, KeyError, ValueError) as exc:
                self.protections.append(f"no memory cgroup ({exc}): the memory limit binds per process only")
        self.log_fd = _high_fd(os.dup(2))
        self.stdin_fd = _high_fd(os.memfd_create("stdin"))
        self.stdout_fd = _high_fd(os.memfd_create("stdout"))
        self.result_fd = _high_fd(os.memfd_create("result"))
        self.job_fd = _high_fd(os.memfd_create("job"))
        self.templates: list[_Template] = []
        self.templates.append(self._start_template())
        if numpy is not None:
            try:
                numpy.ndarray  # the first attribute imports numpy, for the template of the programs that use it
            except Exception:  # noqa: BLE001 - a broken numpy fails the tests that use it, in the first template
                numpy = None
        if numpy is not None:
            self._freeze()
            self.templates.append(self._start_template())
        if all(template.oom_first for template in self.templates):
            self.protections.append("test processes are the OOM killer's first choice (oom_score_adj 1000)")
        else:
            self.protections.append("oom_score_adj of the tests unchanged: /proc/self/oom_score_adj is not writable")
        if self.cgroup is not None:
            limit = self._memory_limit()
            self.cgroup.raise_limit(limit)
            self.protections.append(
                f"cgroup: {limit >> 20} MiB of memory for all of a test's processes together (memfd and shared "
                "memory included; the interpreter's pages it touches count), CPU weight equal to other workers'"
            )
        self.protections.append(
            "tests are forked from a template process that never held a request or a reply: nothing of an earlier "
            "program (its source, its outputs) is in a test's memory, and no frame of the worker is on its stack"
        )

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
            self._minimal_dev()
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
            # Hidden after the re-exposure above (which may cover them): host services' sockets under /run (/var/run
            # links there), and this package, which ships problems with their answers (the worker needs none of its
            # files once it runs).
            package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            for hidden in ("/run", "/var/run", package):
                if os.path.isdir(hidden) and not os.path.islink(hidden):
                    _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=755")
            # a /proc of our own, where a process sees only its own uid's processes (the worker, root, sees all)
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
            if self.ipc_namespace:  # the namespace's POSIX queues, listed for the cleanup after every test
                self.mqueue_dir = tempfile.mkdtemp(prefix="litcg-mqueue-", dir="/tmp")
                _mount("mqueue", self.mqueue_dir, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            return True
        except OSError as exc:
            print(f"sandbox_worker: mount namespace setup failed ({exc}); continuing without it", file=sys.stderr)
            return False
        finally:
            for fd in keep.values():
                os.close(fd)

    @staticmethod
    def _minimal_dev() -> None:
        """Replace /dev (in the worker's mount namespace) by one holding only the devices a program may use.

        `null`, `zero`, `full`, `random`, `urandom` and `tty` are bound in from the real /dev, `fd` and the standard
        streams are links into /proc, and `shm` is a folder for its tmpfs; every other node (GPUs, disks, `kvm`,
        `kmsg`, `fuse`, ...) is out of reach.
        """
        names = [n for n in ("null", "zero", "full", "random", "urandom", "tty") if os.path.exists(f"/dev/{n}")]
        nodes = {name: os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC) for name in names}
        try:
            _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
            for name, fd in nodes.items():
                os.close(os.open(f"/dev/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
                _mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND)
            for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                                 ("stderr", "/proc/self/fd/2")):
                os.symlink(target, f"/dev/{link}")
            os.mkdir("/dev/shm", 0o1777)
        finally:
            for fd in nodes.values():
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
        for name in PREIMPORTS:
            importlib.import_module(name)

    def _freeze(self) -> None:
        """Make what is imported so far permanent and note the address space it takes.

        A test's garbage collection never walks (or copies) permanent objects; a test forked from the next template
        may allocate `memory_mb` above that address space.
        """
        gc.collect()
        gc.freeze()
        self.baseline_vm = self._status_bytes("VmSize")

    def _memory_limit(self) -> int:
        """The cgroup's limit: a test may dirty every page it shares with the worker, and allocate memory_mb on top."""
        return self._status_bytes("VmRSS") + (self.memory_mb << 20)

    @staticmethod
    def _status_bytes(field: str) -> int:
        """A size in bytes from /proc/self/status (`VmSize`, `VmRSS`), 0 when absent."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    # -- the template -------------------------------------------------------------------------------------------------
    def _start_template(self) -> _Template:
        """Fork a template: a copy of the worker taken before any request, which forks every test on request.

        The worker itself receives programs and holds the replies (earlier programs' outputs) in its heap, freed or
        not; a test forked from it would inherit them, and a program scanning its own memory could print a sibling's
        answer. A template only ever sees one-byte commands.

        There are two, forked before and after numpy is imported: forking a process and tearing the copy down costs
        in proportion to what it maps, and numpy (~100 modules, their shared libraries) made every test ~0.4 ms
        dearer, for the few programs that use it. Programs that do not name numpy run in the first, where ``np``
        imports numpy on first use.
        """
        commands_r, commands_w = os.pipe()
        reports_r, reports_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(commands_w)
            os.close(reports_r)
            for other in self.templates:  # else an earlier template would never read end of file
                os.close(other.commands)
                os.close(other.reports)
            try:
                self._template_loop(commands_r, reports_w)
            except BaseException as exc:  # noqa: BLE001 - the worker sees the pipe close; say why on its stderr
                os.write(self.log_fd, f"sandbox_worker: template failed: {exc!r}\n".encode())
            finally:
                os._exit(0)
        os.close(commands_r)
        os.close(reports_w)
        ready = os.read(reports_r, 1)  # the template reports once its setup is done
        if not ready:
            os.waitpid(pid, 0)
            raise RuntimeError("sandbox template failed to start (its reason is on the worker's stderr)")
        return _Template(pid, _high_fd(commands_w), _high_fd(reports_r), self.baseline_vm, ready == b"o")

    def _template_loop(self, commands: int, reports: int) -> None:
        """In the template: per `f` command fork a test, report its pid; per `w` reap it, report how it ended.

        What every test inherits is set up here once: `oom_score_adj` 1000 (under memory pressure the kernel kills a
        test first) and the seccomp filter (the template and a test's setup need none of the calls it denies). Then it
        reports one byte, ``o`` (or ``-`` when `oom_score_adj` could not be set), and waits for commands.
        """
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        self.pid = os.getpid()  # the tests' parent, which they check
        oom_first = _make_oom_first_choice()
        if self.seccomp is not None:
            _prctl(PR_SET_NO_NEW_PRIVS, 1)  # needed without root; the template never executes a program
            _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.seccomp), 0, 0), "seccomp")
        try:  # fill the interpreter's lazy cache for wait4's arguments: the first test then inherits what later ones do
            os.wait4(-1, os.WNOHANG)
        except ChildProcessError:  # the template has no child yet
            pass
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):  # the tests' signal dispositions
            signal.signal(sig, signal.SIG_DFL)
        os.environ["HOME"] = os.environ["TMPDIR"] = self.workdir
        self.child_state = _ChildState(self.header_globals)  # what every test starts from, built once
        os.write(reports, b"o" if oom_first else b"-")  # ready
        while os.read(commands, 1) == b"f":
            if not self._fork_and_reap_test(commands, reports):
                return

    def _fork_and_reap_test(self, commands: int, reports: int) -> bool:
        """In the template: fork one test, report its pid, reap it, report how it ended; False when told to stop.

        Its own frame, so nothing of one test (its pid, exit status, CPU time and memory, which the test controls)
        is left in a live object of the template when the next test is forked.
        """
        pid = _fork_single_threaded()
        if pid == 0:
            self._run_child()  # never returns
        os.write(reports, _PID.pack(pid))
        if os.read(commands, 1) != b"w":  # the worker has opened its handle on the test: it may end now
            return False
        _, status, usage = os.wait4(pid, 0)
        os.write(reports, _REPORT.pack(status, usage.ru_utime, usage.ru_stime, usage.ru_maxrss))
        return True

    def _run_child(self) -> None:
        """In a test's process: read the job the worker left in the job file, enter the sandbox, run the program."""
        code = EXIT_SETUP_FAILED
        try:
            source, fn_name, arguments, cpu_limit, process_limit = marshal.loads(
                os.pread(self.job_fd, os.fstat(self.job_fd).st_size, 0)
            )
            if "random" in source:  # fresh random numbers, as os.fork() reseeds (see _fork_single_threaded)
                random.seed()
            self._enter_sandbox(cpu_limit, process_limit)
            code = _execute(source, fn_name, arguments, self.child_state)
        except BaseException as exc:  # noqa: BLE001 - report sandbox setup failures on the worker's stderr
            try:
                os.write(self.log_fd, f"sandbox_worker: test setup failed: {exc!r}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)

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
        now = time.monotonic()
        if self.uid is None and os.geteuid() != 0 and now - self.tasks_counted_at > TASK_COUNT_SECONDS:
            self.tasks_before = _tasks_of_uid(os.getuid())  # RLIMIT_NPROC counts every task of the trainer's uid
            self.tasks_counted_at = now
        template = self.templates[-1] if _NAMES_NUMPY.search(source) else self.templates[0]
        results = []
        for test_input in inputs:
            if results and results[-1][0] == "compile_error":
                results.append(("compile_error", None))  # compiling is deterministic: no need to rerun
                continue
            results.append(self._run_test(template, source, fn_name, test_input))
        return results

    def _run_test(self, template: _Template, source: str, fn_name: str | None, test_input) -> tuple[str, bytes | None]:
        data = test_input.encode() if isinstance(test_input, str) else b""
        for fd in (self.stdin_fd, self.stdout_fd, self.result_fd):  # the test opens them anew, at offset 0
            os.ftruncate(fd, 0)
        if data:
            os.pwrite(self.stdin_fd, data, 0)
        self._clean_workdir()
        cpu_limit = math.ceil(self.timeout) + 1
        arguments = test_input if fn_name is not None else None  # standard input is in the stdin file already
        # the process limit is counted here, in the worker: the template's copy of tasks_before is as old as it is
        process_limit = self.tasks_before + self.max_processes
        job = marshal.dumps((source, fn_name, arguments, cpu_limit, process_limit))  # plain values, C only, few pages
        os.ftruncate(self.job_fd, 0)
        os.pwrite(self.job_fd, job, 0)
        os.write(template.commands, b"f")  # the template forks the test, which reads the job file
        (pid,) = _PID.unpack(_read_exact(template.reports, _PID.size))
        pidfd = os.pidfd_open(pid)  # before the template may reap it: the pid cannot be reused meanwhile
        os.write(template.commands, b"w")
        try:
            timed_out = not select.select([pidfd], [], [], self.timeout)[0]
        finally:
            os.close(pidfd)
        if timed_out:
            if os.environ.get("LITCG_SANDBOX_DEBUG"):
                self._describe(pid)
            os.kill(pid, signal.SIGKILL)
        status, utime, stime, maxrss = _REPORT.unpack(_read_exact(template.reports, _REPORT.size))
        usage = types.SimpleNamespace(ru_utime=utime, ru_stime=stime, ru_maxrss=maxrss)
        self._kill_leftovers(pid)
        if self.ipc_namespace:
            self._remove_ipc_objects()
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
            if usage.ru_maxrss * 1024 >= template.baseline_vm + (self.memory_mb << 20) * 0.9 or self._oom_killed():
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

    def _oom_killed(self) -> bool:
        """True when the cgroup's memory limit killed a process since the last call."""
        if self.cgroup is None:
            return False
        before, self.oom_kills = self.oom_kills, self.cgroup.oom_kills()
        return self.oom_kills > before

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

    def _enter_sandbox(self, cpu_limit: int, process_limit: int) -> None:
        """In the forked child: new session, fds, rlimits, Landlock, unprivileged uid. Order matters."""
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.pid:
            os._exit(EXIT_SETUP_FAILED)
        # The streams get open file descriptions of their own, not the worker's: what a program sets on a
        # description (byte-range OFD locks, flock, status flags) lasts as long as it, and the worker's outlive a test.
        for path, target in (
            (f"/proc/self/fd/{self.stdin_fd}", 0),
            (f"/proc/self/fd/{self.stdout_fd}", 1),
            (os.devnull, 2),
            (f"/proc/self/fd/{self.result_fd}", 3),
        ):
            _open_as(path, target)
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
            resource.RLIMIT_NPROC: (process_limit,) * 2,
            resource.RLIMIT_CORE: (0, 0),
            resource.RLIMIT_NOFILE: (256, 256),
        }
        for which, value in limits.items():
            resource.setrlimit(which, value)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)

    def _kill_leftovers(self, pid: int) -> None:
        """Kill and reap everything the test started: its process group, any reparented orphan, the sandbox uid.

        The test itself is reaped by now, so whatever it left behind is a child of the worker (its subreaper) or below
        one: the seccomp filter denies ``CLONE_PARENT``, the one way to give the template a child. So while it is in
        place, a worker with no child but its templates has nothing left to kill, and the kill of the whole sandbox
        uid, which looks at every process of the machine, is skipped.
        """
        children_file = f"/proc/self/task/{self.pid}/children"
        templates = {template.pid for template in self.templates}
        for attempt in range(10_000):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return  # no children left at all
            try:
                with open(children_file) as f:
                    others = [int(child) for child in f.read().split() if int(child) not in templates]
            except OSError:
                others = None  # cannot list them: the uid's kill is all there is
            if others == [] and (self.seccomp is not None or self.uid is None):
                return  # the templates alone are left
            if self.uid is not None:
                self._kill_sandbox_uid()
            if not others:
                return
            for child in others:
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            if attempt:
                select.select([], [], [], 0.001)

    def _remove_ipc_objects(self) -> None:
        """Remove every System V object and POSIX message queue of the worker's IPC namespace (only tests use it)."""
        for kind, remove in (
            ("shm", lambda ident: _libc.shmctl(ident, IPC_RMID, None)),
            ("msg", lambda ident: _libc.msgctl(ident, IPC_RMID, None)),
            ("sem", lambda ident: _libc.semctl(ident, 0, IPC_RMID)),
        ):
            try:
                with open(f"/proc/sysvipc/{kind}") as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:  # columns: key, id, ...
                remove(int(row.split()[1]))
        if self.mqueue_dir is not None:
            for name in os.listdir(self.mqueue_dir):
                try:
                    os.unlink(os.path.join(self.mqueue_dir, name))
                except OSError:
                    pass

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
        """Stop the templates, remove the scratch folder and its parent, and the cgroup."""
        for template in self.templates:
            os.close(template.commands)  # the template reads end of file and exits
            os.waitpid(template.pid, 0)
        _remove_tree(self.scratch_parent)
        if self.cgroup is not None:
            self.cgroup.close()


def _remove_tree(path: str) -> None:
    """Delete a folder a test left behind, however deep, also when the test took the permissions away from it.

    Runs only when every process of the test is gone, so nothing can swap a folder for a symlink meanwhile; symlinks
    are never followed. Iterative, with two descriptors open at a time: the subfolders of each emptied folder are
    moved up to `path` itself and emptied in a later round, so neither depth (a test can nest thousands of folders)
    nor path length limits it.
    """
    try:
        top = _open_folder(path)
    except OSError:
        try:
            os.unlink(path)  # a file or a symlink, or already gone
        except OSError:
            pass
        return
    moved, previous = 0, None
    try:
        while subfolders := sorted(e.name for e in os.scandir(top) if e.is_dir(follow_symlinks=False)):
            if subfolders == previous:  # no progress (cannot happen as root): leave the rest
                break
            for name in subfolders:
                moved = _empty_one_level(top, name, moved)
            previous = subfolders
        for entry in os.scandir(top):
            os.unlink(entry.name, dir_fd=top)
    except OSError:
        pass
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError:
        pass


def _open_folder(name: str, dir_fd: int | None = None) -> int:
    """Open a folder to list and empty it, never through a symlink; its mode is 0o700 afterwards.

    A test may have taken every permission away from it: root opens it anyway, its owner (the worker, without root)
    first gives them back. Nothing can swap the folder for a symlink meanwhile: every process of the test is gone.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        folder = os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        if not stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
            raise
        os.chmod(name, 0o700, dir_fd=dir_fd)
        folder = os.open(name, flags, dir_fd=dir_fd)
    try:
        os.fchmod(folder, 0o700)
    except OSError:
        pass  # not its owner (cannot happen: the tests run as the worker's uid or a uid root made for them)
    return folder


def _empty_one_level(top: int, name: str, moved: int) -> int:
    """Unlink the files in folder `name` of `top`, move its subfolders up into `top`, remove it; returns `moved`."""
    try:
        folder = _open_folder(name, top)
    except OSError:
        return moved
    try:
        for entry in list(os.scandir(folder)):
            if entry.is_dir(follow_symlinks=False):
                try:  # moving a folder to another parent rewrites its "..": without root that needs write access
                    os.chmod(entry.name, 0o700, dir_fd=folder)
                except OSError:
                    pass
                while True:  # a fresh name in `top`
                    moved += 1
                    try:
                        os.rename(entry.name, f".litcg-{moved}", src_dir_fd=folder, dst_dir_fd=top)
                        break
                    except (FileExistsError, IsADirectoryError, NotADirectoryError):
                        continue
                    except OSError as exc:
                        if exc.errno != errno.ENOTEMPTY:
                            raise
            else:
                os.unlink(entry.name, dir_fd=folder)
    except OSError:
        pass
    finally:
        os.close(folder)
    try:
        os.rmdir(name, dir_fd=top)
    except OSError:
        pass
    return moved


def _alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _tasks_of_uid(uid: int, proc: str = "/proc") -> int:
    """Processes and threads whose real uid is ``uid``: what ``RLIMIT_NPROC`` counts (``proc``: where /proc is)."""
    count = 0
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{proc}/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("Uid:", "Threads:")))
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            pass  # the process ended meanwhile
    return count


# ----------------------------------------------------------------------------------------------------------------------
# The trusted wrapper that runs inside the sandboxed child.
class _ChildState:
    """The interpreter state every test starts from, built once in the template (each test gets a fresh copy).

    Standard streams on fds 0-2 (the test's memory files once the child has set its fds up), ``sys.argv``, no
    exit handlers of the worker, unlimited integer string conversion, and one module per kind of program (``__main__``
    for standard-input programs, ``solution`` for call-based ones) holding the APPS import header. Building these per
    test cost ~0.3 ms of copy-on-write faults (copying the header into a new module touches every object in it).
    """

    def __init__(self, header_globals: dict):
        if hasattr(sys, "set_int_max_str_digits"):
            sys.set_int_max_str_digits(0)
        self.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False), 1 << 16), encoding="utf-8")
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(
            io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8"
        )
        sys.stdout = sys.__stdout__ = self.stdout
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8")
        sys.argv = ["solution.py"]
        atexit._clear()  # only the program's own exit handlers run at its end, not the worker's
        self.modules = {}
        for name in ("__main__", "solution"):
            module = types.ModuleType(name)
            module.__dict__.update(header_globals)
            module.__builtins__ = builtins
            self.modules[name] = module
        gc.collect()
        gc.freeze()


def _execute(source: str, fn_name: str | None, arguments: list | None, state: _ChildState) -> int:
    """Run the candidate once and return the exit code for the worker. Runs in the sandboxed child.

    ``arguments`` are the call's for call-based programs (None for standard-input ones, which read fd 0).
    """
    stdout = state.stdout
    module = state.modules["__main__" if fn_name is None else "solution"]
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
            result = _resolve_function(module, fn_name, source)(*arguments)
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
    hello = {
        "pid": os.getpid(),
        "template_pids": [template.pid for template in sandbox.templates],
        "protections": sandbox.protections,
    }
    send_message(replies, hello)
    try:
        while (request := receive_message(requests)) is not None:
            send_message(replies, sandbox.run_program(request["source"], request["fn_name"], request["inputs"]))
    except BrokenPipeError:
        pass
    finally:
        sandbox.close()


if __name__ == "__main__":
    main()
