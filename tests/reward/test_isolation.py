"""Hostile programs, second round: channels between programs, ways out of the sandbox, limits that bind.

In PPO/GRPO the n samples of a prompt are scored back to back, so anything one program leaves behind that a later
program can read lets one correct sample pay its siblings. These tests run the writer and the reader as separate
`evaluate` calls on a one-worker evaluator (the worst case: the same worker, the same sandbox uid). Every attack is
bounded (a few KiB, one socket, a few seconds) and removes what it made, so it cannot harm the machine even if the
sandbox failed. Root-only protections (namespaces) are skipped with the reason elsewhere.
"""

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lit_codegen.reward import Evaluator

SECRET = "918273645"
READ_SECRET = {"inputs": ["1\n"], "outputs": [SECRET + "\n"]}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and mounts need root")
# Syscall numbers for the ctypes programs (the sandbox's Python has no wrapper for these calls).
SYSCALLS = {
    "x86_64": {"add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "clone": 56},
    "aarch64": {"add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "clone": 220},
}.get(os.uname().machine)
needs_known_arch = pytest.mark.skipif(SYSCALLS is None, reason="syscall numbers known for x86_64 and aarch64 only")


@pytest.fixture(scope="module")
def one_worker():
    """One worker: the writer and the reader of a channel run in the same sandbox, one after the other."""
    with Evaluator(workers=1, timeout=5.0, memory_mb=256, output_limit_mb=4) as ev:
        ev.start()
        yield ev


def run(evaluator, program, tests=READ_SECRET):
    (result,) = evaluator.evaluate([program], [tests])
    return result


def printed(evaluator, program) -> str:
    """What the program printed on empty input (asked of the worker directly, as the evaluator does)."""
    worker = evaluator._pool[0]
    request = {"source": program, "fn_name": None, "inputs": [""]}
    ((status, payload),) = worker.run(request, deadline=time.monotonic() + 60)
    assert status == "ok", status
    return payload.decode()


@needs_known_arch
def test_kernel_keyring_carries_nothing_to_the_next_program(one_worker):
    nr = SYSCALLS
    writer = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall({nr["add_key"]}, b"user", b"litcg-answer", b"{SECRET}", {len(SECRET)}, -4))  # @u: the uid's keyring
"""
    reader = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
key = libc.syscall({nr["request_key"]}, b"user", b"litcg-answer", None, 0)
buf = ctypes.create_string_buffer(64)
n = libc.syscall({nr["keyctl"]}, 11, key, buf, 64) if key > 0 else -1  # KEYCTL_READ
if key > 0:
    libc.syscall({nr["keyctl"]}, 21, key)  # KEYCTL_INVALIDATE: leave nothing behind even if the sandbox failed
print(buf.raw[:n].decode() if n > 0 else "no key")
"""
    assert printed(one_worker, writer).strip() == "-1"  # add_key fails inside the sandbox
    assert run(one_worker, reader).outcomes == ["wrong_answer"]


@needs_root
def test_system_v_shared_memory_carries_nothing_to_the_next_program(one_worker):
    writer = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
seg = libc.shmget(0x5EC2E7, 4096, 0o1666)  # IPC_CREAT | 0666, a fixed key the reader knows
ctypes.memmove(libc.shmat(seg, None, 0), b"{SECRET}", {len(SECRET)})
print(seg)
"""
    reader = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
seg = libc.shmget(0x5EC2E7, 0, 0)
text = ctypes.string_at(libc.shmat(seg, None, 0), 9).decode() if seg >= 0 else "no segment"
if seg >= 0:
    libc.shmctl(seg, 0, None)  # IPC_RMID: leave nothing behind even if the sandbox failed
print(text)
"""
    assert int(printed(one_worker, writer)) >= 0  # the program may use shared memory within its own test
    assert run(one_worker, reader).outcomes == ["wrong_answer"]
    assert "0x005ec2e7" not in Path("/proc/sysvipc/shm").read_text()  # and nothing reached the host's namespace


@needs_root
def test_posix_message_queues_carry_nothing_to_the_next_program(one_worker):
    writer = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
q = libc.mq_open(b"/litcg-answer", os.O_CREAT | os.O_RDWR, 0o666, None)
print(q, libc.mq_send(q, b"{SECRET}", {len(SECRET)}, 0))
"""
    reader = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
q = libc.mq_open(b"/litcg-answer", os.O_RDONLY | os.O_NONBLOCK)
buf = ctypes.create_string_buffer(8192)
n = libc.mq_receive(q, buf, 8192, None) if q >= 0 else -1
libc.mq_unlink(b"/litcg-answer")
print(buf.raw[:n].decode() if n > 0 else "no queue")
"""
    printed(one_worker, writer)  # with Landlock the queue cannot even be created (EACCES); without, it is removed
    assert run(one_worker, reader).outcomes == ["wrong_answer"]


# The files a test can reach that outlive it: its scratch folder (emptied, never re-created) and its standard streams
# (memory files the worker reuses). Their contents are reset; what the program could attach to them must not stay.
FILES_THAT_OUTLIVE_A_TEST = "('.', 0, 1, 3)"  # the scratch folder (cwd) and fds 0, 1, 3 (stdin, stdout, result)


@needs_known_arch
def test_extended_attributes_carry_nothing_to_the_next_program(one_worker):
    """A user attribute holds kilobytes, an ACL a 32-bit id per entry: both stayed on the scratch folder and the
    memory files, as root and without, until seccomp denied setting them."""
    acl_with_secret = "struct.pack('<I', 2) + b''.join(struct.pack('<HHI', *e) for e in " \
        f"[(1, 7, 2**32 - 1), (2, 4, {SECRET}), (4, 0, 2**32 - 1), (0x10, 4, 2**32 - 1), (0x20, 0, 2**32 - 1)])"
    writer = f"""
import os, struct
errors = []
for target in {FILES_THAT_OUTLIVE_A_TEST}:
    for name, value in (("user.litcg", b"{SECRET}"), ("system.posix_acl_access", {acl_with_secret})):
        try:
            os.setxattr(target, name, value)
        except OSError as exc:
            errors.append(exc.errno)
print(*errors)
"""
    reader = f"""
import os, struct
found = []
for target in {FILES_THAT_OUTLIVE_A_TEST}:
    for name in os.listxattr(target):
        value = os.getxattr(target, name)
        found.append(value.decode(errors="replace"))
        if name == "system.posix_acl_access":
            found += [str(struct.unpack_from("<I", value, 4 + 8 * i + 4)[0]) for i in range((len(value) - 4) // 8)]
        os.removexattr(target, name)  # leave nothing behind even if the sandbox failed
print("{SECRET}" if "{SECRET}" in found else found)
"""
    assert printed(one_worker, writer).split() == [str(errno.ENOTSUP)] * 8  # "not supported here", every time
    assert run(one_worker, reader).outcomes == ["wrong_answer"]


@needs_known_arch
def test_file_times_and_inode_flags_carry_nothing_to_the_next_program(one_worker):
    """The scratch folder's times (128 bits) and its inode flags (`chattr +d`) stayed for the next test."""
    writer = f"""
import array, fcntl, os
try:
    os.utime(".", ns=({SECRET}, {SECRET}))
except OSError as exc:
    print(exc.errno)
folder = os.open(".", os.O_RDONLY)
flags = array.array("l", [0])
try:
    fcntl.ioctl(folder, 0x80086601, flags, True)  # FS_IOC_GETFLAGS (some file systems have no flags)
except OSError:
    pass
flags[0] |= 0x40  # FS_NODUMP_FL, which the owner may set
try:
    fcntl.ioctl(folder, 0x40086602, flags, True)  # FS_IOC_SETFLAGS
except OSError as exc:
    print(exc.errno)
"""
    reader = f"""
import array, fcntl, os
flags = array.array("l", [0])
try:
    fcntl.ioctl(os.open(".", os.O_RDONLY), 0x80086601, flags, True)
except OSError:
    pass
print("{SECRET}" if os.stat(".").st_mtime_ns == {SECRET} or flags[0] & 0x40 else "nothing")
"""
    assert printed(one_worker, writer).split() == [str(errno.EPERM)] * 2
    assert run(one_worker, reader).outcomes == ["wrong_answer"]


def test_locks_and_flags_of_the_standard_streams_carry_nothing_to_the_next_program(one_worker):
    """A byte-range lock holds 128 bits (its start and length) and lives as long as the open file description: on a
    description the worker kept, the next program read it back. Each test now opens the stream files anew."""
    writer = f"""
import fcntl, os, struct
fcntl.fcntl(0, fcntl.F_SETFL, fcntl.fcntl(0, fcntl.F_GETFL) | os.O_APPEND | os.O_NONBLOCK)
for fd in (0, 1, 2, 3):
    fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, {SECRET}, 77, 0))  # F_OFD_SETLK
    fcntl.flock(fd, fcntl.LOCK_EX)
print("locked")
"""
    reader = f"""
import fcntl, os, struct
found = []
if fcntl.fcntl(0, fcntl.F_GETFL) & (os.O_APPEND | os.O_NONBLOCK):
    found.append("flags")
for fd in (0, 1, 2, 3):
    other = os.open(f"/proc/self/fd/{{fd}}", os.O_RDWR)  # another description of the same file
    lock = fcntl.fcntl(other, 36, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))  # F_OFD_GETLK
    found.append(str(struct.unpack("hhqqi4x", lock)[2]))
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        found.append("flock")
print("{SECRET}" if "{SECRET}" in found or "flock" in found or "flags" in found else found)
"""
    assert printed(one_worker, writer) == "locked\n"  # a program may lock its streams
    assert run(one_worker, reader).outcomes == ["wrong_answer"]


def test_unix_socket_of_a_host_service_is_unreachable(one_worker, tmp_path):
    """A host service listening on a pathname socket the sandbox can see (the issue found one under /run)."""
    folder = Path("/run") if os.access("/run", os.W_OK) else tmp_path
    path = folder / f"litcg-test-{os.getpid()}.sock"
    os.chmod(tmp_path, 0o755)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    os.chmod(path, 0o666)
    server.listen(1)
    server.settimeout(8)
    accepted = []

    def serve():
        try:
            conn, _ = server.accept()
            accepted.append(True)
            conn.sendall(SECRET.encode() + b"\n")
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    program = f"""
import socket
import stat
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect({str(path)!r})
    print(s.recv(100).decode().strip())
except OSError as exc:
    print("blocked", exc.errno)
"""
    try:
        result = run(one_worker, program)
    finally:
        server.close()
        thread.join()
        path.unlink()
    assert result.outcomes == ["wrong_answer"] and not accepted


def test_vsock_and_netlink_sockets_are_denied(one_worker):
    program = """
import socket
import stat
made = []
for family in (40, 16):  # AF_VSOCK (the hypervisor), AF_NETLINK (the kernel)
    try:
        socket.socket(family, socket.SOCK_DGRAM if family == 16 else socket.SOCK_STREAM).close()
        made.append(family)
    except OSError:
        pass
print(made)
"""
    assert printed(one_worker, program).strip() == "[]"
    assert printed(one_worker, "import socket\nsocket.socket().close()\nprint('ok')").strip() == "ok"  # IPv4 is fine


@needs_known_arch
def test_new_user_namespaces_are_denied(one_worker):
    program = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall({SYSCALLS["unshare"]}, 0x10000000), ctypes.get_errno())  # CLONE_NEWUSER
"""
    assert printed(one_worker, program).split() == ["-1", "1"]  # EPERM
    threads = "import threading\nt = threading.Thread(target=print, args=('t',))\nt.start()\nt.join()"
    assert printed(one_worker, threads) == "t\n"  # threads (clone3 falls back to clone) still work


@needs_known_arch
def test_siblings_of_a_test_cannot_be_made(one_worker):
    """clone(CLONE_PARENT) would make the new process a child of the template: out of the worker's reach (it reaps and
    lists its own children), it would stay a zombie and count against the process limit of every later test."""
    program = f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.syscall({SYSCALLS["clone"]}, 0x8000 | signal.SIGCHLD, 0, 0, 0, 0)  # CLONE_PARENT
if pid == 0:
    os._exit(0)
print(pid, ctypes.get_errno())
"""
    for _ in range(40):  # more than the process limit, had they been made
        assert printed(one_worker, program).split() == ["-1", "1"]  # EPERM
    forks = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\nprint('forked')"
    assert printed(one_worker, forks) == "forked\n"


@needs_root
def test_other_processes_are_invisible_in_proc(one_worker):
    marker = f"litcg-marker-{os.getpid()}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    program = f"""
import os
found = []
for pid in os.listdir("/proc"):
    try:
        with open(f"/proc/{{pid}}/cmdline", "rb") as f:
            if b"{marker}" in f.read():
                found.append(pid)
    except OSError:
        pass
print("found" if found else "hidden", len([p for p in os.listdir("/proc") if p.isdigit()]))
"""
    try:
        assert printed(one_worker, program).split() == ["hidden", "1"]  # only the test's own process
    finally:
        sleeper.kill()
        sleeper.wait()


def test_test_processes_are_the_oom_killers_first_choice(one_worker):
    assert printed(one_worker, "print(open('/proc/self/oom_score_adj').read().strip())") == "1000\n"


def test_thousands_of_nested_folders_do_not_kill_the_worker(one_worker):
    pid = one_worker._pool[0].proc.pid
    deep = "import os\nfor i in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\n"
    deep += "try:\n    os.chmod('.', 0o500)\nexcept PermissionError:\n    pass\nprint(1)"  # denied without root
    assert run(one_worker, deep, {"inputs": [""], "outputs": ["1\n"]}).outcomes == ["passed"]
    assert run(one_worker, "import os\nprint(os.listdir('.'))", {"inputs": [""], "outputs": ["[]\n"]}).passed
    assert one_worker._pool[0].proc.pid == pid  # the cleanup in between did not crash it


@needs_root
def test_bundled_problems_of_an_installed_package_are_unreadable(tmp_path):
    """A regular (non-editable) install puts the toy problems, answers included, in site-packages, which tests may
    read; the worker hides the package. Checked with the package copied into a fresh venv's site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    package = Path(__file__).resolve().parents[2] / "lit_codegen"
    shutil.copytree(package, Path(purelib) / "lit_codegen", ignore=shutil.ignore_patterns("__pycache__"))
    toy = Path(purelib) / "lit_codegen" / "data" / "toy_problems.jsonl"
    assert toy.is_file()
    program = f"""
try:
    print(open({str(toy)!r}).read()[:20])
except OSError as exc:
    print("hidden", type(exc).__name__)
"""
    script = f"""
import time
from lit_codegen.reward import Evaluator
with Evaluator(workers=1, timeout=5.0) as ev:
    ev.start()
    request = {{"source": {program!r}, "fn_name": None, "inputs": [""]}}
    print(ev._pool[0].run(request, deadline=time.monotonic() + 60)[0][1].decode())
"""
    env = {"PATH": os.environ["PATH"], "PYTHONSAFEPATH": "1"}
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0] == "hidden", out.stdout


@needs_root
def test_memory_files_count_against_the_memory_limit(one_worker):
    """memfd pages are outside RLIMIT_AS: memory files held 659 MiB with memory_mb=256 before the memory cgroup.
    (Each file is capped at the output limit, 4 MiB here, by RLIMIT_FSIZE; 100 of them hold 400 MiB.)"""
    program = """
import os
files = []
for i in range(100):
    fd = os.memfd_create(f"m{i}")
    assert os.write(fd, b"x" * (4 << 20)) == 4 << 20
    files.append(fd)
print(918273645)
"""
    assert run(one_worker, program).outcomes == ["memory_limit"]
    assert run(one_worker, "print(918273645)").passed  # and the next test has its memory back


@needs_root
def test_memory_limit_binds_all_processes_of_a_test_together(one_worker):
    """6 processes x 200 MiB (each under its own RLIMIT_AS) reached 1.2 GiB with memory_mb=256 before the cgroup."""
    program = """
import os, time
children = []
for i in range(6):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        block = bytearray(200 << 20)
        for j in range(0, len(block), 4096):
            block[j] = 1
        os.write(w, b"1")
        time.sleep(30)  # hold the memory (the test's processes are all killed when it ends)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    children.append(pid)
all_held = all(os.waitpid(pid, os.WNOHANG)[0] == 0 for pid in children)  # none was killed meanwhile
print(918273645 if all_held else "a child could not hold its memory")
"""
    assert run(one_worker, program).outcomes[0] in ("memory_limit", "wrong_answer")


def test_a_test_inherits_no_earlier_replies_from_the_worker(one_worker):
    """Tests used to be forked from the worker, whose heap held earlier replies: a program scanning its own memory
    found a sibling's printed answers there. They are forked from a template that never held one."""
    answer = "print(('MARKER-918273645' + chr(10)) * 2000, end='')"
    assert printed(one_worker, answer).count("MARKER-918273645") == 2000
    scanner = """
import ctypes
needle = ("MARK" + "ER-").encode() + str(918273644 + 1).encode()  # built here: at most a few copies are its own
found = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    if not fields[1].startswith("r") or fields[-1] in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
        continue
    start, end = (int(x, 16) for x in fields[0].split("-"))
    for chunk in range(start, end, 1 << 24):
        try:
            found += ctypes.string_at(chunk, min(1 << 24, end - chunk)).count(needle)
        except Exception:
            pass
print("leak" if found > 50 else "clean")
"""
    assert run(one_worker, scanner, {"inputs": [""], "outputs": ["clean\n"]}).outcomes == ["passed"]


def test_no_frame_of_the_worker_is_reachable_from_a_test(one_worker):
    """Walking up the stack used to reach the worker's request (every input of the program's tests)."""
    program = """
import sys
frame, names = sys._getframe(), set()
while frame is not None:
    names |= set(frame.f_locals)
    frame = frame.f_back
print(sorted(names & {"request", "inputs", "results"}))
"""
    assert run(one_worker, program, {"inputs": [""], "outputs": ["[]\n"]}).outcomes == ["passed"]


def test_replies_far_longer_than_the_answer_are_judged_without_parsing(monkeypatch):
    """Judging is the trusted side's cost: 16 MiB of huge integers took seconds of JSON parsing with the GIL held,
    16 MiB of short lines hundreds of MiB. In strict mode a reply far longer than the expected answer is wrong
    unparsed; a long right answer (trailing whitespace aside) is still parsed and passes."""
    from lit_codegen.reward import evaluator as evaluator_module
    from lit_codegen.reward.compare import parse_tests

    parsed = []
    real_judge = evaluator_module.judge
    monkeypatch.setattr(evaluator_module, "judge", lambda payload, *a: parsed.append(len(payload)) or real_judge(
        payload, *a))

    def verdict(payload, tests, mode="strict"):
        batch = evaluator_module._Batch([parse_tests(tests)], mode)
        batch.pending[0] = 1
        batch.deliver(evaluator_module._Job(batch, 0, 0, "", tests.get("fn_name"), tests["inputs"]), [("ok", payload)])
        return batch.done.get_nowait()[1].outcomes[0]

    huge_ints = ("[" + ", ".join(["9" * 100_000] * 20) + "]").encode()  # 2 MB of 100,000-digit integers
    for mode in ("strict", "apps"):  # a right call-based answer is about as long as the expected one in both modes
        assert verdict(huge_ints, {"fn_name": "f", "inputs": [[1]], "outputs": [[1, 2]]}, mode) == "wrong_answer"
    short_lines = b"1\n" * (4 << 20)
    assert verdict(short_lines, {"inputs": ["\n"], "outputs": ["1\n"]}) == "wrong_answer"
    assert parsed == []  # neither was parsed
    long_answer = "\n".join(str(i) for i in range(100_000)) + "\n"
    assert verdict((long_answer + " \n" * 100_000).encode(), {"inputs": ["\n"], "outputs": [long_answer]}) == "passed"
    assert verdict(short_lines, {"inputs": ["\n"], "outputs": ["1\n"]}, mode="apps") == "passed"  # the reference's rule
    assert len(parsed) == 2


@needs_root
def test_only_a_few_device_nodes_are_visible(one_worker):
    """GPU device nodes (`/dev/nvidia*` are usually world-read-writable), disks, kvm: a test sees none of them. Stood
    for by a world-readable character device made here (the null device's numbers)."""
    device = Path(f"/dev/litcg-test-{os.getpid()}")
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(device, 0o666)
    program = f"""
import os
try:
    os.close(os.open({str(device)!r}, os.O_RDONLY))
    print("opened")
except OSError as exc:
    print(type(exc).__name__)
print(sorted(os.listdir("/dev")))
with open("/dev/null", "w") as f, open("/dev/urandom", "rb") as r:
    f.write(str(len(r.read(8))))
"""
    try:
        lines = printed(one_worker, program).splitlines()
    finally:
        device.unlink()
    assert lines[0] == "FileNotFoundError"
    assert eval(lines[1]) == sorted(["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "tty",
                                     "urandom", "zero"])


FINGERPRINT = """
import collections, gc, os, resource, sys
gc.unfreeze()  # the template freezes what it imported: count those objects too
objects = gc.get_objects()
print(len(objects), sorted(collections.Counter(map(type, objects)).items(), key=str))
print(sorted(sys.modules), sorted(os.environ.items()), os.getcwd(), sorted(os.listdir(".")))
print(sorted(os.listdir("/proc/self/fd")), os.getuid(), os.getgid(), os.getpgrp() == os.getpid())
print([resource.getrlimit(getattr(resource, n)) for n in dir(resource) if n.startswith("RLIMIT_")])
print(sorted(os.listdir("/dev/shm")), gc.isenabled(), print is __builtins__.print,
      open("/proc/self/oom_score_adj").read())
frame = sys._getframe().f_back  # the trusted frames below the program, and what they hold
while frame is not None:
    print(frame.f_code.co_name, sorted((name, repr(value)[:80]) for name, value in frame.f_locals.items()))
    frame = frame.f_back
"""
# What a test inherits: the interpreter's objects (how many of each type), modules, environment, folders, open files,
# ids, limits, and the locals of the trusted frames below the program. Printed by a program of the same source, so
# everything the program itself makes is the same.


def test_a_test_after_many_programs_inherits_what_a_test_of_a_fresh_worker_inherits():
    """A test starts from the same state whatever ran before it: after many programs of every outcome (answers,
    crashes, timeouts, leftovers in /tmp and /dev/shm, memory growth, a dict of modules imported) the state a test
    inherits is the one a fresh worker's first test inherits."""
    busy = [
        "import numpy, json, re, fractions\nprint(sum(map(int, input().split())))",
        "import os\nopen('/tmp/left', 'w').write('x' * 1000)\nopen('/dev/shm/left', 'w').write('y')\nprint(3)",
        "import sys\nsys.setrecursionlimit(10**6)\ndef f(n): return f(n + 1)\nf(0)",
        "x = [bytearray(1 << 20) for _ in range(100)]\nprint(len(x))",
        "import os, time\nif os.fork() == 0:\n    time.sleep(30)\nprint(3)",
        "while True: pass",
        "import gc\ngc.disable()\nimport builtins\nbuiltins.print = None",
        "def f(a, b): return a + b",
    ]
    tests = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    with Evaluator(workers=1, timeout=1.0, memory_mb=256) as ev:
        fresh = printed(ev.start(), FINGERPRINT)
        ev.evaluate(busy * 3, [tests] * len(busy) * 3)
        after = printed(ev, FINGERPRINT)
    assert after == fresh
    assert fresh.splitlines()[4] == "[] True True 1000"  # and the program ran to the end


def test_each_test_starts_as_after_os_fork(one_worker):
    """Tests are forked without CPython's fork hooks (they only matter with other threads, which the template never
    has), so what the hooks would have done must still hold: fresh random numbers in every test, and the one thread
    is the main thread, which can start and join others."""
    program = """
import random, threading
t = threading.Thread(target=lambda: None)
t.start()
t.join()
print(random.getrandbits(64), threading.current_thread() is threading.main_thread(), threading.active_count())
"""
    worker = one_worker._pool[0]
    replies = worker.run({"source": program, "fn_name": None, "inputs": ["", ""]}, deadline=time.monotonic() + 60)
    replies.append(worker.run({"source": program, "fn_name": None, "inputs": [""]}, deadline=time.monotonic() + 60)[0])
    lines = [payload.decode().split() for status, payload in replies]
    assert [line[1:] for line in lines] == [["True", "1"]] * 3
    assert len({line[0] for line in lines}) == 3  # equal by chance with probability 3 / 2**64


WITHOUT_ROOT = """
import importlib, json, os, sysconfig, tempfile, threading
from lit_codegen.reward import sandbox_worker as sw

if os.geteuid() == 0:  # become an ordinary user, as most users of a cluster are, after importing what is needed
    for name in sw.PREIMPORTS:
        importlib.import_module(name)
    exec(sw.APPS_HEADER, {})
    sysconfig.get_paths()
    os.chdir("/")
    try:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    except OSError as exc:  # root of a user namespace that does not map uid 65534
        print(json.dumps({"skip": f"cannot become uid 65534: {exc}"}))
        raise SystemExit
stop = threading.Event()
for _ in range(40):  # the uid runs more tasks than a test may start
    threading.Thread(target=stop.wait, daemon=True).start()
sandbox = sw.Sandbox(timeout=5, memory_mb=256, output_limit_mb=4, max_processes=8)
forks = "import os, time\\ncount = 0\\nfor _ in range(30):\\n    try:\\n        if os.fork() == 0:\\n"
forks += "            time.sleep(30)\\n            os._exit(0)\\n        count += 1\\n"
forks += "    except OSError:\\n        break\\nprint(count)"
threads = "import threading\\nt = threading.Thread(target=print, args=('thread',))\\nt.start()\\nt.join()"
_, owned = tempfile.mkstemp(prefix="litcg-owned-")  # a file of the trainer's uid, outside the scratch folder
vandal = f'''
import os
os.makedirs('d/e/f')
denied = 0
for path in ('d/e/f', 'd/e', 'd', '.', {owned!r}):
    try:
        os.chmod(path, 0o500)
    except PermissionError:
        denied += 1
print(denied)
'''
channels_writer = '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget(0x5EC2E9, 4096, 0o1666)  # IPC_CREAT | 0666: host-wide without root
if segment >= 0:
    ctypes.memmove(libc.shmat(segment, None, 0), b"918273645", 9)
for attempt in (lambda: os.setxattr(".", "user.litcg", b"918273645"),
                lambda: os.setxattr(1, "user.litcg", b"918273645"),
                lambda: os.utime(".", ns=(918273645, 918273645))):
    try:
        attempt()
    except OSError:
        pass
print(segment)
'''
channels_reader = '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
found = []
segment = libc.shmget(0x5EC2E9, 0, 0)
if segment >= 0:
    found.append(ctypes.string_at(libc.shmat(segment, None, 0), 9).decode())
    libc.shmctl(segment, 0, None)  # IPC_RMID: leave nothing behind even if the sandbox failed
for target in (".", 1):
    found += [os.getxattr(target, name).decode() for name in os.listxattr(target)]
if os.stat(".").st_mtime_ns == 918273645:
    found.append("the mtime")
print(found)
'''
processes = '''
import os, resource
resource.setrlimit(resource.RLIMIT_STACK, resource.getrlimit(resource.RLIMIT_STACK))  # its own: allowed
os.sched_setaffinity(0, os.sched_getaffinity(0))
outcomes = []
for attempt in (lambda: resource.prlimit(os.getppid(), resource.RLIMIT_RTTIME, (918273645, 918273645)),
                lambda: os.sched_setaffinity(os.getppid(), {min(os.sched_getaffinity(0))}),
                lambda: os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)):  # PRIO_USER would renice them all
    try:
        attempt()
        outcomes.append("changed")
    except PermissionError:
        outcomes.append("denied")
print(*outcomes)
'''
template = sandbox.templates[0].pid  # the programs below do not name numpy: this template forks them
nice = os.getpriority(os.PRIO_PROCESS, template)
results = [
    sandbox.run_program(vandal, None, [""]),
    sandbox.run_program("import os\\nprint(os.listdir('.'))", None, [""]),
    sandbox.run_program("print(input())", None, ["hello"]),
    sandbox.run_program("print(open('/proc/self/oom_score_adj').read().strip())", None, [""]),
    sandbox.run_program(threads, None, [""]),
    sandbox.run_program(forks, None, [""]),
    sandbox.run_program(channels_writer, None, [""]),
    sandbox.run_program(channels_reader, None, [""]),
    sandbox.run_program(processes, None, [""]),
]
reniced = os.getpriority(os.PRIO_PROCESS, template) != nice
owned_mode = oct(os.stat(owned).st_mode & 0o777)
os.remove(owned)
replies = [[status, None if payload is None else payload.decode()] for (status, payload), in results]
report = {"uid": os.getuid(), "protections": sandbox.protections, "results": replies, "owned_mode": owned_mode,
          "reniced": reniced}
print(json.dumps(report))
sandbox.close()
"""


def test_tests_run_without_root():
    """As an ordinary user (the script drops root first when the tests run as root): tests run, are the OOM killer's
    first choice, find their scratch folder empty after a test made folders in it (and, where seccomp cannot deny
    chmod, took write access away from them: the worker gives it back), and the process limit counts the tasks the
    uid already runs, so a test can start a thread beside a trainer with many threads, and still no more than 8
    processes. The tests run as the trainer's uid: they cannot change the mode of the trainer's files, nor the limits,
    CPUs or priority of the trainer's processes (their own, yes), and neither a host-wide System V segment nor the
    extended attributes or times of the scratch folder or the standard output carry anything to the next program."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_ROOT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    if "skip" in report:
        pytest.skip(report["skip"])
    assert report["uid"] != 0
    assert "test processes are the OOM killer's first choice (oom_score_adj 1000)" in report["protections"]
    vandal, listing, hello, oom, thread, forks, channels_writer, channels_reader, processes = report["results"]
    assert vandal[0] == "ok" and listing == ["ok", "[]\n"]
    if SYSCALLS is not None:  # seccomp's rules are known for this architecture
        assert vandal[1] == "5\n" and report["owned_mode"] == "0o600"  # every chmod denied
        assert channels_writer == ["ok", "-1\n"] and channels_reader == ["ok", "[]\n"]
        assert processes == ["ok", "denied denied denied\n"] and not report["reniced"]
    assert hello == ["ok", "hello\n"] and oom == ["ok", "1000\n"] and thread == ["ok", "thread\n"]
    assert forks[0] == "ok" and 1 <= int(forks[1]) < 8
