"""Attacks a hostile snippet makes on the caller, one test each (README, "The sandbox").

Most of these attacks succeeded against the sandbox before namespaces, the framed channel, the capability
drop and the memory cgroup; the others (deadline, TCP, 2 GB) guard what already held. The README's attack
table says which is which. Each runs against the namespaced sandbox and against its fallback.
"""
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from mumath import executor
from mumath.executor import SandboxPool
from mumath.sandbox_worker import descendants_of

REPO = Path(__file__).resolve().parent.parent
FORGED = "FORGED-BY-THE-SNIPPET"

# Writes a reply in the old line format and in the framed format into every descriptor the snippet holds and
# every descriptor of its parent (the worker) it can open through /proc.
FORGE = textwrap.dedent(f"""
    import json, os, struct
    fake = {{"id": "hello", "stdout": {FORGED!r}, "error": None, "timed_out": False, "seconds": 0.0}}
    body = json.dumps(fake).encode()
    payloads = [body + b"\\n", struct.pack(">4sI", b"MMSB", len(body)) + body]
    targets = [f"/proc/self/fd/{{fd}}" for fd in range(3, 64)]
    try:
        targets += [f"/proc/{{os.getppid()}}/fd/{{fd}}" for fd in os.listdir(f"/proc/{{os.getppid()}}/fd")]
    except OSError:
        pass
    for fd in range(3, 64):
        for payload in payloads:
            try:
                os.write(fd, payload)
            except OSError:
                pass
    for path in targets:
        for payload in payloads:
            try:
                handle = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.write(handle, payload)
                os.close(handle)
            except OSError:
                pass
""")

GARBLE = FORGE.replace("payloads = [", "payloads = [b'garbage without a newline \\xff', b'MMSB\\xff\\xff\\xff\\xff', ")


@pytest.fixture(scope="module", params=["namespaces", "fallback"])
def pool(request):
    """Every attack runs against the sandbox with namespaces (where the kernel allows) and without."""
    if request.param == "namespaces" and not executor.namespaces_available():
        pytest.skip("no namespaces on this kernel; the fallback runs the same attacks")
    # 5 s: touching 512 MB before the OOM kill takes about a second on a busy 2-core VM.
    with SandboxPool(workers=2, timeout=5, memory_mb=512, max_output_chars=1000,
                     namespaces=request.param == "namespaces") as sandbox:
        yield sandbox


def still_works(pool):
    for index in range(4):
        assert pool.execute(f"print({index})").stdout.strip() == str(index), "every later reply is its own"


def test_a_snippet_cannot_forge_a_reply(pool):
    result = pool.execute(FORGE + "print('real')")
    assert FORGED not in result.stdout
    # Not even its own reply is touched: none of its writes reached the channel (else the nonce check would
    # have failed this snippet and replaced the worker).
    assert result.ok and result.stdout.strip() == "real", result
    still_works(pool)


def test_the_snippet_holds_no_descriptor_of_the_channel(pool):
    result = pool.execute(textwrap.dedent("""
        import os
        print(sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
        opened, worker = [], f"/proc/{os.getppid()}/fd"
        try:
            listed = os.listdir(worker)
        except PermissionError:  # a root caller's snippet is another uid than its worker: not even listed
            listed = []
        for fd in listed:
            try:
                os.close(os.open(f"{worker}/{fd}", os.O_RDONLY | os.O_NONBLOCK))
                opened.append(fd)
            except OSError:
                pass
        print(opened)
    """))
    own, worker = result.stdout.split("\n")[:2]
    assert own == "[0, 1, 2, 3, 4]", "stdin, stdout, stderr, its result pipe, and listdir's own descriptor"
    assert worker == "[]", "none of the worker's descriptors can be opened through /proc"


def test_a_snippet_cannot_garble_a_batch(pool):
    codes = [GARBLE if index % 3 == 0 else f"print({index})" for index in range(9)]
    results = pool.execute_many(codes)  # must not raise
    assert len(results) == len(codes)
    for index, result in enumerate(results):
        assert result.ok, result  # the garbler too: its noise reached nothing
        if index % 3:
            assert result.stdout.strip() == str(index)
    still_works(pool)


def worker_channel_descriptor(worker):
    """The worker's end of its reply pipe, opened from outside (needs root: the worker is not dumpable)."""
    inode = os.fstat(worker.process.stdout.fileno()).st_ino
    for fd in os.listdir(f"/proc/{worker.pid}/fd"):
        if os.readlink(f"/proc/{worker.pid}/fd/{fd}") == f"pipe:[{inode}]":
            return f"/proc/{worker.pid}/fd/{fd}"
    raise AssertionError("reply pipe not found")


@pytest.mark.skipif(os.geteuid() != 0, reason="injecting noise into the channel needs root")
@pytest.mark.parametrize("noise", [b"not a frame", b"MMSB\x00\x00\x00\x05[1,2]",
                                   b'MMSB\x00\x00\x00\x44{"id": "0", "stdout": "x", "error": null, '
                                   b'"timed_out": false, "seconds": 0}'])
def test_noise_on_the_channel_is_told_from_a_reply(noise):
    with SandboxPool(workers=1, timeout=3, preimport=[]) as sandbox:
        worker = sandbox._all[0]
        handle = os.open(worker_channel_descriptor(worker), os.O_WRONLY)
        os.write(handle, noise)
        os.close(handle)
        result = sandbox.execute("print('mine')")  # reads the noise first
        assert result.error and result.error.startswith("SandboxError") and sandbox._all[0] is not worker
        assert sandbox.execute("print('next')").stdout.strip() == "next"


def test_a_snippet_runs_without_capabilities(pool):
    result = pool.execute("print(open('/proc/self/status').read())")
    fields = {key: int(value, 16) for key, value in
              (line.split(":\t") for line in result.stdout.splitlines() if line.startswith("Cap"))}
    # Without namespaces a root caller's snippet runs as nobody with CAP_DAC_READ_SEARCH alone (README).
    allowed = 0 if pool.namespaces or os.geteuid() != 0 else 1 << 2
    assert fields["CapEff"] | fields["CapPrm"] | fields["CapBnd"] | fields["CapAmb"] == allowed, fields


SCAN_PROC = textwrap.dedent("""
    import os
    key, found, read = {key!r}, [], 0
    for pid in os.listdir("/proc"):
        for name in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{{pid}}/{{name}}", "rb").read()
            except OSError:
                continue
            read += 1
            if key.encode() in data:
                found.append(f"{{pid}}/{{name}}")
    print(read, found)
""")

CALLER = textwrap.dedent("""
    import sys
    from mumath.executor import SandboxPool
    with SandboxPool(workers=1, timeout=10, preimport=[], namespaces={namespaces}) as pool:
        result = pool.execute({code!r})
    print("RESULT", result.stdout.strip(), result.error)
""")


def scan_from_a_caller_holding_a_key(namespaces):
    """Run a real caller, started with OPENAI_API_KEY (and the key in its argv), whose snippet scans /proc."""
    key = "sk-mumath-fake-" + os.urandom(8).hex()
    code = CALLER.format(namespaces=namespaces, code=SCAN_PROC.format(key=key))
    env = dict(os.environ, OPENAI_API_KEY=key, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code, key], env=env, capture_output=True, text=True, timeout=120)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    read, found = line.split(" ", 2)[1:]
    return int(read), found


def test_caller_secrets_are_not_visible_through_proc():
    if not executor.namespaces_available():
        pytest.skip("no namespaces here; the fallback has its own test")
    read, found = scan_from_a_caller_holding_a_key(namespaces=None)
    assert read > 0, "the scan read at least the snippet's own /proc entries"
    assert found == "[] None", f"the snippet read the caller's key from /proc: {found}"


def test_fallback_without_namespaces_warns_once_and_works(monkeypatch):
    monkeypatch.setattr(executor, "NAMESPACE_COMMAND", ["/nonexistent/unshare", "--"])
    monkeypatch.setattr(executor, "_namespace_support", {})
    with pytest.warns(RuntimeWarning, match="namespaces are not available"):
        sandbox = SandboxPool(workers=1, timeout=3, preimport=[])
    with sandbox, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert executor.namespaces_available() is False  # no second warning
        assert sandbox.namespaces is False
        assert sandbox.execute("print(6 * 7)").stdout.strip() == "42"
        assert sandbox.execute("import os\nprint(len(os.listdir('/proc')) > 3)").stdout.strip() == "True"


@pytest.mark.skipif(os.geteuid() != 0, reason="without namespaces a non-root snippet shares the caller's uid")
def test_fallback_hides_a_root_callers_environment():
    read, found = scan_from_a_caller_holding_a_key(namespaces=False)
    assert read > 0
    # The key is also in the caller's argv, and /proc/<pid>/cmdline is world-readable: without namespaces
    # that is visible (README); the environment is not.
    assert "environ" not in found, f"the snippet read the caller's environment: {found}"


def test_threads_and_a_fresh_numpy_fit_in_512_mb(pool):
    if pool.memory_limit != "cgroup":
        pytest.skip("no memory cgroup (not root): the RLIMIT_AS fallback refuses these, as the README says")
    threads = pool.execute(textwrap.dedent("""
        from concurrent.futures import ThreadPoolExecutor
        def work(n):
            return len(bytearray(4 * 2**20)) // 2**20
        with ThreadPoolExecutor(16) as threads:
            print(sum(threads.map(work, range(64))))
    """))
    assert threads.ok and threads.stdout.strip() == "256", threads
    numpy = pool.execute(textwrap.dedent("""
        import subprocess, sys
        code = "import numpy; a = numpy.ones((200, 200)); print(int((a @ a)[0, 0]))"
        env = {"OPENBLAS_NUM_THREADS": "16", "OMP_NUM_THREADS": "16", "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-I", "-c", code], env=env, capture_output=True, text=True)
        print(done.stdout.strip() or done.stderr.strip().splitlines()[-1])
    """))
    assert numpy.ok and numpy.stdout.strip() == "200", numpy


def test_two_gigabytes_are_still_killed_and_reported(pool):
    result = pool.execute("data = b'x' * (2 * 1024**3)\nprint('allocated')")
    assert "allocated" not in result.stdout and result.error and result.error.startswith("MemoryError"), result
    still_works(pool)


def test_a_timed_out_snippet_is_killed_at_its_deadline(pool):
    code = textwrap.dedent("""
        import os, time
        if os.fork() == 0:  # a detached grandchild that would outlive a kill of the snippet alone
            os.setsid()
            while True:
                time.sleep(0.05)
        while True:
            open("beat", "a").write(f"{time.time()}\\n")
            time.sleep(0.05)
    """)
    started = time.monotonic()
    result = pool.execute(code)
    returned = time.monotonic() - started
    assert result.timed_out and returned < pool.timeout + 5, "returns at the deadline, not after it"
    for _ in range(3):  # and nothing of the snippet runs on after it
        for worker in pool._all:
            assert descendants_of(worker.pid) == [], "every process of the snippet is gone"
        time.sleep(0.2)
    still_works(pool)


def test_tcp_connect_is_refused(pool):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = pool.execute(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                              "print('connected')")
        assert "connected" not in result.stdout and result.error
        with pytest.raises(socket.timeout):
            server.accept()


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are made only for a root caller")
@pytest.mark.parametrize("version", [1, 2])
def test_cgroups_are_made_in_either_hierarchy(tmp_path, monkeypatch, version):
    """On a fake cgroupfs: the right files for each version (the real v1 tree is exercised by the tests above;
    this machine has no v2 memory controller to try)."""
    own = "/user.slice/job"
    if version == 1:
        for controller in ("memory", "pids"):
            (tmp_path / controller / own.lstrip("/")).mkdir(parents=True)
        (tmp_path / "memory" / own.lstrip("/") / "memory.memsw.limit_in_bytes").write_text("")
        table = f"4:memory:{own}\n8:pids:{own}\n0::/\n"
    else:
        (tmp_path / own.lstrip("/")).mkdir(parents=True)
        (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
        (tmp_path / own.lstrip("/") / "cgroup.subtree_control").write_text("")
        table = f"0::{own}\n"
    (tmp_path / "self-cgroup").write_text(table)
    monkeypatch.setattr(executor, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(executor, "PROC_SELF_CGROUP", str(tmp_path / "self-cgroup"))
    made = executor._make_cgroups({"memory_mb": 512, "max_processes": 64})
    assert [controller for _, controller, _ in made] == ["memory", "pids"]
    (memory, _, events), (pids, _, _) = made
    limit = {1: "memory.limit_in_bytes", 2: "memory.max"}[version]
    assert Path(memory, limit).read_text() == str(512 * 2**20) and Path(pids, "pids.max").read_text() == "64"
    assert events == os.path.join(memory, {1: "memory.oom_control", 2: "memory.events"}[version])
    assert all(Path(path).parent == Path(tmp_path, *([] if version == 2 else [controller]), own.lstrip("/"))
               for path, controller, _ in made), "children of the caller's own cgroups"


# Issue 20: what a snippet could still reach through the file system (docs/sandbox-isolation.md). Each of these
# succeeded before the private root and the snippet identity; without namespaces they are not covered.
def namespaced(pool):
    if not pool.namespaces:
        pytest.skip("not covered without namespaces (docs/sandbox-isolation.md, 'What the fallback lacks')")


def test_a_snippet_cannot_read_the_callers_private_files(pool, tmp_path):
    namespaced(pool)
    secret = "sk-private-" + os.urandom(8).hex()
    path = tmp_path / "api-key.txt"
    path.write_text(secret)
    path.chmod(0o600)
    result = pool.execute(f"print(open({str(path)!r}).read())")
    assert secret not in result.stdout and result.error, result


@pytest.mark.skipif(os.geteuid() != 0, reason="a non-root caller has one uid to map: the snippet keeps it")
def test_a_root_callers_snippet_runs_as_a_uid_that_owns_nothing(pool):
    namespaced(pool)
    result = pool.execute(textwrap.dedent("""
        import os
        inside = os.getuid()
        for line in open("/proc/self/uid_map"):
            first, host, count = map(int, line.split())
            if first <= inside < first + count:
                print(host + inside - first)
    """))
    assert result.stdout.strip() == str(executor.SANDBOX_HOST_ID), result
    assert str(executor.SANDBOX_HOST_ID) not in Path("/etc/passwd").read_text()


def test_a_snippet_cannot_read_another_running_snippets_output(pool):
    namespaced(pool)
    marker = "OUTPUT-OF-ANOTHER-PROBLEM-" + os.urandom(8).hex()
    writer = f"import time\nprint({marker!r})\nopen('answer.txt', 'w').write({marker!r})\ntime.sleep(2)"
    reader = textwrap.dedent("""
        import glob, time
        time.sleep(0.7)
        paths = glob.glob("/tmp/mumath-sandbox-*/**", recursive=True) + glob.glob("/sandbox/**", recursive=True)
        seen = []
        for path in paths:
            try:
                seen.append(open(path).read())
            except OSError:
                pass
        print(len(paths), seen)
    """)
    started = time.monotonic()
    written, read = pool.execute_many([writer, reader])
    assert time.monotonic() - started < 3.5, "the two snippets ran side by side"
    assert marker in written.stdout and read.ok, (written, read)
    assert marker not in read.stdout, read.stdout


def test_a_pathname_unix_socket_cannot_be_reached(pool, tmp_path):
    namespaced(pool)
    path = tmp_path / "service.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        os.chmod(path, 0o777)
        server.listen()
        server.settimeout(0.5)
        result = pool.execute(f"import socket\nclient = socket.socket(socket.AF_UNIX)\nclient.connect({str(path)!r})\n"
                              "client.sendall(b'DROP TABLE users')\nprint('connected')")
        assert "connected" not in result.stdout and result.error, result
        with pytest.raises(socket.timeout):
            server.accept()


FILL_THE_DISK = textwrap.dedent("""
    import os
    block, written, reason = b"x" * 2**20, 0, None
    try:
        for index in range(64):  # 256 MiB in files of 4 MiB (each under the per-file cap)
            with open(f"fill-{index}", "wb") as handle:
                for _ in range(4):
                    handle.write(block)
                    handle.flush()
                    written += 1
    except OSError as exc:
        reason = exc.strerror
    for name in os.listdir("."):  # room again for stdout.txt, which lives on the same disk
        if name.startswith("fill-"):
            os.remove(name)
    print(written, reason)
""")


def test_a_snippet_cannot_fill_the_disk(pool):
    namespaced(pool)
    result = pool.execute(FILL_THE_DISK)
    written, reason = result.stdout.split(" ", 1)
    assert int(written) < 256 and reason.strip() == "No space left on device", result
    assert int(written) <= pool.disk_mb
    still_works(pool)


def test_the_private_root_shows_only_the_python_installation_not_the_callers_checkout(monkeypatch, tmp_path):
    """The worker runs as a script from the caller's checkout (its folder is sys.path[0]) and an editable
    install puts the project on sys.path: neither is the interpreter's, so neither is bound into the root.
    (A checkout under /tmp once made every worker fail to start: /tmp then existed in the new root.)"""
    import sys

    from mumath import sandbox_worker

    checkout = tmp_path / "checkout" / "mumath"
    checkout.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(checkout), str(tmp_path / "checkout")] + sys.path)
    visible = sandbox_worker.visible_paths()
    assert not any(path.startswith(str(tmp_path)) for path in visible)
    assert sys.prefix in visible
