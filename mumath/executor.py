"""Run untrusted, model-written Python in a sandbox and get its output back.

`SandboxPool` keeps `workers` long-lived worker processes (`sandbox_worker.py`). Each pre-imports sympy,
numpy and friends once, then forks a fresh child per snippet, so a snippet costs a fork, not an
interpreter start plus a sympy import.

What it protects against (each has a test in tests/test_executor.py):
- the caller being taken down: the code runs in another process, in its own session; `os._exit`,
  `sys.exit`, segfaults and `os.kill(os.getppid(), 9)` end only that process (a Landlock signal scope,
  ABI >= 6, stops it from signalling anything outside its sandbox);
- runaway time: a wall-clock `timeout` per snippet (plus RLIMIT_CPU); on timeout the worker kills the
  snippet's whole process tree (the worker is a child subreaper, so even re-parented orphans are found);
- runaway memory: RLIMIT_AS of `memory_mb` on top of the pre-imported zygote; a 10 GB allocation raises
  MemoryError inside the snippet;
- fork bombs: at most `max_processes` processes per worker, through a pids cgroup of its own when the
  caller is root and cgroup v1 is writable (root is exempt from RLIMIT_NPROC), else RLIMIT_NPROC;
- floods of output: stdout is truncated to `max_output_chars`, files to `max_file_bytes`;
- writes outside its own temporary folder: Landlock (Linux >= 5.13) allows file creation and writes only
  beneath that folder, and blocks TCP connect/bind (ABI >= 4);
- secrets: the worker gets a minimal environment (no API keys, no HF tokens).

What it does not protect against: reading files the caller may read (the snippet runs as the caller's
uid: as root that is every file); a kernel or Landlock escape; on kernels without Landlock, writes
anywhere the caller may write and signals to the caller's processes; as root without a writable pids
cgroup, fork bombs (until the timeout kills them). `SandboxPool.landlock_abi` tells what the running kernel gave.
Use a VM or container when the threat is more than a confused model.
"""
import atexit
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
PREIMPORT = ["math", "cmath", "fractions", "decimal", "itertools", "functools", "collections",
             "statistics", "random", "re", "sympy", "numpy", "scipy"]
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

@dataclass
class ExecutionResult:
    stdout: str
    error: str | None
    timed_out: bool
    seconds: float = 0.0

    @property
    def ok(self):
        return self.error is None and not self.timed_out

    def as_output(self, max_chars=2000):
        """The text that goes into the trajectory between ```output fences (ToRA convention)."""
        text = self.stdout.rstrip("\n")
        if len(text) > max_chars:
            text = text[:max_chars] + f"\n... [output truncated at {max_chars} characters]"
        if self.timed_out:
            return (text + "\n" if text else "") + "TimeoutError: execution timed out"
        if self.error:
            return (text + "\n" if text else "") + self.error.strip().splitlines()[-1]
        return text

class Worker:
    """One worker process, its private folder, and (as root) its own pids cgroup."""

    def __init__(self, limits):
        self.root = tempfile.mkdtemp(prefix="mumath-sandbox-")
        env = dict(SAFE_ENV, HOME=self.root, TMPDIR=self.root)
        self.process = subprocess.Popen(
            [sys.executable, "-I", WORKER_SCRIPT, self.root, json.dumps(limits)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            cwd=self.root, start_new_session=True, text=True, bufsize=1)
        # The worker forks nothing before its first request, so joining the cgroup now is in time.
        self.cgroup = _join_pids_cgroup(self.process.pid, limits["max_processes"])
        hello = self._read_line(timeout=120)
        if hello is None:
            self.kill()
            raise RuntimeError("sandbox worker did not start (see mumath/sandbox_worker.py)")
        self.landlock_abi = json.loads(hello)["landlock_abi"]

    def _read_line(self, timeout):
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        return line or None

    def run(self, request, timeout):
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = self._read_line(timeout)
        return json.loads(line) if line else None

    def kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.kill()
        self.process.wait()
        if self.cgroup:
            _remove_cgroup(self.cgroup)
        shutil.rmtree(self.root, ignore_errors=True)

class SandboxPool:
    """A pool of sandbox workers; `execute` and `execute_many` are safe to call from many threads."""

    def __init__(self, workers=2, timeout=10.0, memory_mb=1024, max_output_chars=4000,
                 max_file_bytes=16 * 2**20, max_processes=64, preimport=None):
        self.timeout = float(timeout)
        self.limits = {"timeout": self.timeout, "memory_mb": int(memory_mb),
                       "max_output_chars": int(max_output_chars), "max_file_bytes": int(max_file_bytes),
                       "max_processes": self._process_cap(max_processes),
                       "preimport": PREIMPORT if preimport is None else list(preimport)}
        self._idle = queue.Queue()
        self._all = []
        self._lock = threading.Lock()
        with ThreadPoolExecutor(workers) as starter:
            for worker in starter.map(lambda _: Worker(self.limits), range(workers)):
                self._all.append(worker)
                self._idle.put(worker)
        self.landlock_abi = self._all[0].landlock_abi
        self._threads = ThreadPoolExecutor(workers)
        atexit.register(self.close)

    @staticmethod
    def _process_cap(max_processes):
        if os.geteuid() == 0:
            return max_processes
        # RLIMIT_NPROC counts all of this user's processes, not just the sandbox's.
        uid = os.getuid()
        mine = sum(1 for entry in os.listdir("/proc") if entry.isdigit() and _owner(entry) == uid)
        return mine + max_processes

    def execute(self, code, prelude=()):
        """Run one snippet; `prelude` blocks run first, silently (to carry state across blocks)."""
        worker = self._idle.get()
        try:
            reply = worker.run({"code": code, "prelude": list(prelude)}, timeout=self.timeout + 15)
            if reply is None:  # the worker itself died or hung: replace it, report the snippet as failed
                worker = self._replace(worker)
                return ExecutionResult("", "SandboxError: the worker process died", False)
            return ExecutionResult(**reply)
        finally:
            self._idle.put(worker)

    def execute_many(self, codes, preludes=None):
        preludes = preludes or [()] * len(codes)
        return list(self._threads.map(self.execute, codes, preludes))

    def _replace(self, worker):
        index = self._all.index(worker)
        worker.kill()
        fresh = Worker(self.limits)
        with self._lock:
            self._all[index] = fresh
        return fresh

    def close(self):
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.kill()
        if hasattr(self, "_threads"):
            self._threads.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

def _owner(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None

PIDS_CGROUP_ROOT = "/sys/fs/cgroup/pids"

def _join_pids_cgroup(pid, max_processes):
    """Put `pid` in a fresh cgroup v1 pids group capped at `max_processes`; None where that is impossible."""
    if os.geteuid() != 0 or not os.access(PIDS_CGROUP_ROOT, os.W_OK):
        return None
    path = os.path.join(PIDS_CGROUP_ROOT, f"mumath-sandbox-{os.getpid()}-{pid}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as handle:
            handle.write(str(max_processes))
        with open(os.path.join(path, "cgroup.procs"), "w") as handle:
            handle.write(str(pid))
        return path
    except OSError:
        _remove_cgroup(path)
        return None

def _remove_cgroup(path):
    try:
        with open(os.path.join(path, "cgroup.procs")) as handle:
            for line in handle:
                try:
                    os.kill(int(line), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
    except OSError:
        pass
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:

            time.sleep(0.01)
