"""Hostile programs: one test per attack class. Each attack is bounded so that it cannot harm the machine even
if the sandbox failed (few hundred processes at most, bounded memory and output, files only in pytest's tmp dir)."""

import os
import socket
import time

import pytest

from lit_codegen.reward.evaluator import Evaluator
from reward_helpers import DATA, sandbox_leftovers

# The expected output is a number the program cannot compute without cheating.
SECRET = {"inputs": ["1\n"], "outputs": ["918273645\n"]}
SECRET_CALL = {"fn_name": "f", "inputs": [[1]], "outputs": [918273645]}


def run(evaluator, program, tests=SECRET):
    (result,) = evaluator.evaluate([program], [tests])
    return result


def worker_pids(evaluator):
    return [w.proc.pid for w in evaluator._pool]


def test_reading_expected_output_from_stack_frames_and_heap(evaluator):
    program = """
import gc, sys
seen = set()
frame = sys._getframe()
while frame is not None:
    for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
        seen.add(repr(value))
    frame = frame.f_back
for obj in gc.get_objects():
    try:
        seen.add(repr(obj)[:10000])
    except Exception:
        pass
hits = [s for s in seen if "918273645" in s]
print(hits[0] if hits else "nothing found")
"""
    assert run(evaluator, program).outcomes == ["wrong_answer"]
    assert run(evaluator, program.replace("print(hits[0] if hits else", "print(len(hits), "), SECRET).outcomes == [
        "wrong_answer"
    ]


def test_monkeypatching_the_judge_has_no_effect(evaluator):
    program = """
import builtins, json, sys
for name in list(sys.modules):
    if "lit_codegen" in name or "sandbox_worker" in name or name == "__main__":
        mod = sys.modules[name]
        for attr in dir(mod):
            if callable(getattr(mod, attr, None)):
                try:
                    setattr(mod, attr, lambda *a, **k: True)
                except Exception:
                    pass
try:
    import lit_codegen.reward.compare as compare
    compare.judge = lambda *a, **k: True
except Exception:
    pass
json.dumps = lambda *a, **k: "918273645"
print("wrong")
"""
    assert run(evaluator, program).outcomes == ["wrong_answer"]
    # call-based: patching also breaks the in-process wrapper of its own test; still never a pass
    assert run(evaluator, program.replace('print("wrong")', "def f(x):\n    return 0"), SECRET_CALL).outcomes[0] in (
        "wrong_answer",
        "runtime_error",
    )
    assert run(evaluator, "print(918273645)").outcomes == ["passed"]  # judging still works afterwards


def test_object_whose_eq_is_always_true(evaluator):
    always_equal = "class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
    assert run(evaluator, always_equal + "def f(x):\n    return Any()", SECRET_CALL).outcomes == ["wrong_answer"]
    sneaky_int = "class Int(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Int(5)"
    assert run(evaluator, sneaky_int, SECRET_CALL).outcomes == ["wrong_answer"]  # serialised as 5


def test_closing_stdout_cannot_fake_success(evaluator):
    assert run(evaluator, "import os\nos.close(1)\nprint('wrong')").outcomes == ["runtime_error"]
    # the printed answer cannot be delivered once fd 1 is closed: not a pass either
    assert run(evaluator, "import os\nos.close(1)\nprint(918273645)").outcomes == ["runtime_error"]
    assert run(evaluator, "import os\nos.close(1)\nos.close(2)\nos.close(3)\n").outcomes == ["wrong_answer"]


def test_killing_the_parent_and_the_process_group(evaluator):
    before = worker_pids(evaluator)
    for program in (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('wrong')",
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nprint('wrong')",
        "import os, signal\nos.killpg(0, signal.SIGKILL)",
    ):
        assert run(evaluator, program).outcomes[0] in ("runtime_error", "wrong_answer")
    assert worker_pids(evaluator) == before  # no worker died or was restarted
    assert all(w.proc.poll() is None for w in evaluator._pool)


def test_sleep_times_out_on_time(evaluator):
    start = time.monotonic()
    assert run(evaluator, "import time\ntime.sleep(60)").outcomes == ["timeout"]
    assert time.monotonic() - start < evaluator.timeout + 3


def test_fork_bomb_is_capped_and_cleaned_up(evaluator):
    # bounded: the original process forks at most 300 sleepers (not exponential)
    program = """
import os, time
count = 0
for _ in range(300):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        count += 1
    except OSError:
        break
print(count)
"""
    result = run(evaluator, program, {"inputs": [""], "outputs": ["300\n"]})
    assert result.outcomes == ["wrong_answer"]  # RLIMIT_NPROC stopped it well before 300
    assert sandbox_leftovers(evaluator) == []


def test_threads_count_against_the_cap(evaluator):
    program = """
import threading, time
n = 0
try:
    for _ in range(200):
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        n += 1
except RuntimeError:
    pass
print(n)
"""
    assert run(evaluator, program, {"inputs": [""], "outputs": ["200\n"]}).outcomes == ["wrong_answer"]


def test_memory_growth_hits_the_cap():
    """The program touches ~200 MiB before the cap: 0.1 s here, but CI once took over 2 s for it on a fresh machine
    (first touches of its memory), so the time limit is one the verdict cannot depend on."""
    program = "chunks = []\nfor _ in range(20):\n    chunks.append(bytearray(100 * 1024**2))\nprint('done')"
    with Evaluator(workers=1, timeout=30.0, memory_mb=256) as evaluator:
        assert run(evaluator, program, {"inputs": [""], "outputs": ["done\n"]}).outcomes == ["memory_limit"]


def test_stdout_flood_hits_the_output_cap(evaluator):
    program = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 1024**2)\n"  # at most 200 MiB
    assert run(evaluator, program).outcomes == ["output_limit"]
    call = "def f(x):\n    print('y' * 10 * 1024**2)\n    return 918273645"
    assert run(evaluator, call, SECRET_CALL).outcomes == ["output_limit"]


def test_recursion_crash(evaluator):
    # C-level recursion past the stack (3.11 runs Python-to-Python calls without C stack): a segfault
    program = "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return list(map(f, [n + 1]))\nf(0)"
    assert run(evaluator, program).outcomes == ["runtime_error"]
    assert run(evaluator, "def f(n):\n    return f(n + 1)\nf(0)").outcomes == ["runtime_error"]


def test_detached_double_forked_children_do_not_survive(evaluator):
    program = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
time.sleep(0.2)
print("wrong")
"""
    assert run(evaluator, program).outcomes == ["wrong_answer"]
    assert sandbox_leftovers(evaluator) == []


def test_no_network_even_to_a_loopback_listener(evaluator):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = f"""
import socket
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
    s.sendall(b"hello")
    print("connected")
except OSError:
    print("blocked")
"""
    try:
        assert run(evaluator, program, {"inputs": [""], "outputs": ["blocked\n"]}).outcomes == ["passed"]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_no_writes_or_deletes_outside_the_sandbox(evaluator, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    os.chmod(victim, 0o666)
    escaped = tmp_path / "escaped.txt"
    program = f"""
import os, shutil
results = []
for action in (lambda: os.remove({str(victim)!r}), lambda: open({str(escaped)!r}, "w").write("x"),
               lambda: open({str(victim)!r}, "w").write("overwritten"), lambda: shutil.rmtree({str(tmp_path)!r}),
               lambda: open("/etc/litcg_escape", "w").write("x")):
    try:
        action()
        results.append("done")
    except OSError:
        results.append("blocked")
open("scratch.txt", "w").write("allowed")  # its own scratch directory is writable
print(" ".join(results), open("scratch.txt").read())
"""
    expected = "blocked blocked blocked blocked blocked allowed\n"
    assert run(evaluator, program, {"inputs": [""], "outputs": [expected]}).outcomes == ["passed"]
    assert victim.read_text() == "keep me" and not escaped.exists() and not os.path.exists("/etc/litcg_escape")


def test_cannot_read_the_dataset_or_home(evaluator):
    if not any("Landlock" in p for p in evaluator.protections):
        pytest.skip("read restrictions need Landlock")
    program = f"""
for path in ({str(DATA / "README.md")!r}, {os.path.expanduser("~/.bashrc")!r}, {__file__!r}):
    try:
        open(path).read()
        print("read")
    except OSError:
        print("blocked")
"""
    assert run(evaluator, program, {"inputs": [""], "outputs": ["blocked\nblocked\nblocked\n"]}).outcomes == ["passed"]


def test_environment_secrets_are_not_inherited(evaluator, monkeypatch):
    program = "import os\nprint(sorted(k for k in os.environ if 'TOKEN' in k or 'KEY' in k))"
    assert run(evaluator, program, {"inputs": [""], "outputs": ["[]\n"]}).outcomes == ["passed"]


def test_a_test_cannot_break_the_scratch_folder_of_later_tests(evaluator):
    # take write access away from the scratch folder and from a folder in it, plant an input file
    vandal = "import os\nos.makedirs('d/e')\nopen('input.txt', 'w').write('6')\n"
    # without root chmod is denied
    vandal += "try:\n    os.chmod('d', 0)\n    os.chmod('.', 0o555)\nexcept PermissionError:\n    pass"
    writer = "open('out.txt', 'w').write(input())\nimport os\nprint(open('out.txt').read() if not " \
             "os.path.exists('input.txt') else 'planted')"
    tests = {"inputs": ["7\n"], "outputs": ["7"]}
    for _ in range(2):  # every worker gets a vandal
        assert [r.outcomes for r in evaluator.evaluate([vandal, vandal], [SECRET, SECRET])] == [["wrong_answer"]] * 2
    assert [r.outcomes for r in evaluator.evaluate([writer] * 4, [tests] * 4)] == [["passed"]] * 4


@pytest.mark.skipif(os.geteuid() != 0, reason="without root the test runs under the worker's uid")
def test_a_test_cannot_replace_its_scratch_folder(evaluator):
    program = """
import os
here = os.getcwd()
for attempt in (lambda: os.rename(here, here + ".moved"), lambda: os.rmdir(here),
                lambda: os.symlink("/etc", os.path.join(os.path.dirname(here), "x"))):
    try:
        attempt()
        print("changed")
    except OSError:
        print("denied")
"""
    assert run(evaluator, program, {"inputs": [""], "outputs": ["denied\ndenied\ndenied"]}).outcomes == ["passed"]


def test_forged_worker_messages_cannot_run_code():
    import pickle

    from lit_codegen.reward import sandbox_worker

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    read_fd, write_fd = os.pipe()
    try:
        sandbox_worker.send_message(write_fd, [("ok", b"1\n"), {"a": None, "b": 2.5}])
        assert sandbox_worker.receive_message(read_fd) == [("ok", b"1\n"), {"a": None, "b": 2.5}]
        sandbox_worker.send_message(write_fd, [("ok", Exploit())])
        with pytest.raises(pickle.UnpicklingError, match="plain data only"):
            sandbox_worker.receive_message(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_the_process_limit_without_root_counts_the_tasks_the_uid_already_runs(tmp_path):
    """Without root, RLIMIT_NPROC counts every task of the uid, so the limit is set above what the uid already runs:
    every thread of every process of that uid (known answer on a made-up /proc), this process's threads included."""
    import threading

    from lit_codegen.reward.sandbox_worker import _tasks_of_uid

    processes = {"10": (1000, 3), "11": (1000, 1), "12": (0, 40), "13": (1001, 2)}
    for pid, (uid, threads) in processes.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nThreads:\t{threads}\n")
    (tmp_path / "self").mkdir()  # not a pid
    (tmp_path / "14").mkdir()  # a process that ended while /proc was read: no status file
    assert _tasks_of_uid(1000, str(tmp_path)) == 4
    assert _tasks_of_uid(0, str(tmp_path)) == 40

    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(5)]
    for thread in threads:
        thread.start()
    try:  # live: other processes of the uid come and go, but this one's 6+ threads are counted
        assert _tasks_of_uid(os.getuid()) >= threading.active_count() >= 6
    finally:
        stop.set()
        for thread in threads:
            thread.join()
