"""The sandbox: results come back, and nothing a snippet does takes the caller down."""
import os
import time

import pytest

from mumath.executor import SandboxPool


@pytest.fixture(scope="module")
def pool():
    # 5 s: touching 512 MB before the OOM kill takes about a second on a busy 2-core VM.
    with SandboxPool(workers=2, timeout=5, memory_mb=512, max_output_chars=1000) as sandbox:
        yield sandbox


def run(pool, code):
    result = pool.execute(code)
    assert pool.execute("print(6 * 7)").stdout.strip() == "42", "the pool must still work afterwards"
    return result


def test_stdout_comes_back(pool):
    result = pool.execute("import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(2*x - 4, x))")
    assert result.ok and result.stdout.strip() == "[2]"


def test_last_expression_is_shown_like_a_notebook_cell(pool):
    assert pool.execute("a = 3\na * 7").stdout.strip() == "21"


def test_error_gives_its_last_line(pool):
    result = pool.execute("x = 1\ny = x / 0")
    assert result.error.startswith("ZeroDivisionError") and result.as_output() == "ZeroDivisionError: division by zero"


def test_os_exit(pool):
    result = run(pool, "print('before', flush=True)\nimport os\nos._exit(0)")
    assert result.stdout.strip() == "before" and result.error is None


def test_sys_exit(pool):
    assert run(pool, "import sys\nsys.exit()").error is None
    assert "SystemExit: 3" in run(pool, "import sys\nsys.exit(3)").error


def test_infinite_loop_times_out(pool):
    started = time.time()
    result = run(pool, "while True: pass")
    assert result.timed_out and "TimeoutError" in result.as_output()
    assert time.time() - started < 10


def test_fork_bomb_is_contained(pool):
    result = run(pool, "import os\nwhile True:\n    os.fork()")
    assert result.error or result.timed_out
    from mumath.sandbox_worker import descendants_of

    for worker in pool._all:
        assert descendants_of(worker.pid) == [], "every forked process is gone"


def test_huge_allocation_is_refused(pool):
    result = run(pool, "x = b'x' * (10 * 1024**3)")  # touched, so a real-memory limit sees it too
    assert result.error.startswith("MemoryError")


def test_output_flood_is_truncated(pool):
    result = run(pool, "print('x' * 100_000_000)")
    assert len(result.stdout) <= 1001 and result.stdout.startswith("xxx")


def test_killing_the_parent_fails(pool):
    result = run(pool, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert "PermissionError" in (result.error or "") or pool.landlock_abi < 6


def test_killing_the_caller_fails(pool):
    code = f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\nprint('sent')"
    result = run(pool, code)
    # Landlock refuses the signal; in the sandbox's own pid namespace the caller's pid does not even exist.
    assert "PermissionError" in (result.error or "") or "ProcessLookupError" in (result.error or "")
    # and we are still here to assert it


def test_writes_outside_its_folder_fail(pool, tmp_path):
    target = tmp_path / "escaped.txt"
    os.chmod(tmp_path, 0o777)
    result = run(pool, f"open({str(target)!r}, 'w').write('x')")
    # Landlock refuses it; in the private root (namespaces) the folder does not even exist.
    assert not target.exists() and result.error.split(":")[0] in ("PermissionError", "FileNotFoundError")
    visible = run(pool, "open('/etc/escaped.txt', 'w').write('x')")  # a host folder the snippet does see
    assert not os.path.exists("/etc/escaped.txt") and visible.error.split(":")[0] in ("PermissionError", "OSError")
    inside = run(pool, "open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
    assert inside.stdout.strip() == "ok"


def test_no_secrets_in_the_environment(pool, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    result = pool.execute("import os\nprint(sorted(k for k in os.environ if 'KEY' in k or 'TOKEN' in k))")
    assert result.stdout.strip() == "[]"


def test_state_does_not_leak_between_snippets(pool):
    pool.execute("leaked = 1")
    assert "NameError" in pool.execute("print(leaked)").error


def test_prelude_carries_state_silently(pool):
    result = pool.execute("print(total + 1)", prelude=["total = 41\nprint('hidden')"])
    assert result.stdout.strip() == "42"


def test_parallel_execution(pool):
    # each snippet prints its index and the wall-clock interval it slept in; with 2 workers, two intervals
    # must overlap (a serial pool would leave them end to end)
    code = "import time\nstart = time.time()\ntime.sleep(0.5)\nprint({i}, start, time.time())"
    results = pool.execute_many([code.format(i=i) for i in range(4)])
    printed = [r.stdout.split() for r in results]
    assert [fields[0] for fields in printed] == ["0", "1", "2", "3"]
    intervals = [(float(start), float(end)) for _, start, end in printed]
    assert any(a_start < b_end and b_start < a_end
               for i, (a_start, a_end) in enumerate(intervals) for b_start, b_end in intervals[i + 1:]), intervals


def test_dead_worker_is_replaced():
    with SandboxPool(workers=1, timeout=2) as sandbox:
        worker = sandbox._all[0]
        os.killpg(worker.process.pid, 9)
        result = sandbox.execute("print(1)")
        assert result.error and "SandboxError" in result.error
        assert sandbox.execute("print(2)").stdout.strip() == "2"


def test_a_non_root_callers_process_cap_counts_its_own_processes(monkeypatch):
    """RLIMIT_NPROC counts all of the caller's processes: the cap is theirs plus max_processes. (This raised
    NameError for every non-root caller: `_owner` had gone.)"""
    import os

    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(os, "getuid", lambda: 0)  # the processes of uid 0 on this machine: at least this one
    assert SandboxPool._process_cap(64) > 64
