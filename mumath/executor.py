"""Run untrusted, model-written Python in a sandbox and get its output back.

`SandboxPool` keeps `workers` long-lived worker processes (`sandbox_worker.py`). Each pre-imports sympy,
numpy and friends once, then forks a fresh child per snippet, so a snippet costs a fork, not an
interpreter start plus a sympy import.

The layers, outermost first (docs/sandbox-isolation.md has the table of what each covers and what it does not,
and tests/test_sandbox_attacks.py a test for each attack):
- namespaces: each worker starts under `unshare` in its own user, pid, mount and network namespaces with a fresh
  /proc: a snippet sees no process outside its sandbox (so no caller's /proc/<pid>/environ), and has no network;
- the snippet's identity: a root caller maps two ids into the user namespace, 0 (the worker) and
  SNIPPET_ID, which is SANDBOX_HOST_ID on the host, a uid and gid that own nothing; the snippet runs as it, so
  the host's mode-600 files are closed to it even where it can see them. (A non-root caller may map only its
  own uid: its snippets keep it, and the private root alone hides its files);
- the private root: the worker pivots into a size-capped tmpfs (`disk_mb`) holding read-only binds of the
  system folders and of this Python with its packages, four devices and a fresh /proc. The host's /tmp, /home,
  /root, /run, the project and other snippets' folders do not exist there, nor do pathname unix sockets, and
  the tmpfs is the only writable place (a full disk is ENOSPC for this snippet only);
  Where the kernel refuses any of this (some containers), a warning, and a root caller's snippets run as
  `nobody` instead (so root's /proc/<pid>/environ and mode-600 files stay closed to them);
- the channel: requests and replies are framed (magic, length, JSON) and every reply must carry the nonce of
  its request; the snippet's child holds no descriptor of it (it reports through a pipe of its own) and the
  worker is not dumpable (no /proc/<worker>/fd). Anything else on the channel fails that one snippet, and the
  worker is replaced; `execute` and `execute_many` never raise;
- cgroups (as root, v1 or v2): real memory (`memory_mb`, the OOM killer ends the snippet, reported as a
  MemoryError) and `max_processes` per worker, holding only the snippet's processes; RLIMIT_AS and
  RLIMIT_NPROC are the fallback (RLIMIT_AS counts reserved memory: threads hit it long before real use);
- the child itself: its own process group and folder, no capabilities (none through execve either),
  RLIMIT_CPU/FSIZE/CORE, a minimal environment, Landlock (writes only beneath its folder, no TCP, no
  signals out of its domain); a wall-clock `timeout` after which the worker, a subreaper, kills its whole tree.

Not covered: what everybody may read in the system folders and the Python install; without namespaces, the
host's files the snippet's uid may read, other snippets' folders, pathname unix sockets and the disk (per file
only); a kernel, namespace or Landlock escape. Use a VM or container when the threat is more than a confused
or malicious model.
"""
import atexit
import itertools
import json
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .sandbox_worker import FRAME_HEADER, FRAME_MAGIC, MAX_FRAME_BYTES, SNIPPET_ID, descendants_of

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
PREIMPORT = ["math", "cmath", "fractions", "decimal", "itertools", "functools", "collections",
             "statistics", "random", "re", "sympy", "numpy", "scipy"]
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
# Each worker gets its own user, pid, mount and network namespaces and a fresh /proc: a snippet sees only the
# sandbox's processes and has no network but an unconfigured loopback. A non-root caller maps its uid to the
# namespace's root (`--map-root-user`, inserted after `--user`); a root caller writes the maps itself
# (`_map_identities`), with a second identity for the snippets.
NAMESPACE_COMMAND = ["unshare", "--user", "--pid", "--fork", "--mount", "--mount-proc", "--net", "--"]
# Under a root caller the worker waits in `sh` until its maps are written: a program exec'd before that would
# start without capabilities in the namespace (its uid is not mapped yet).
WAIT_FOR_MAPS = ["sh", "-c", 'read -r go && exec "$@"', "sh"]
# The host uid and gid a root caller's snippets run as: an id no account and no file has (check with
# `find / -uid 2147000000`), so a snippet can read only what everybody may read.
SANDBOX_HOST_ID = 2147000000

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

class ProtocolError(Exception):
    """The worker's reply was not a well-formed answer to the request just sent."""


class Worker:
    """One worker process (in its own namespaces where allowed), its private folder, and its cgroups."""

    def __init__(self, limits, namespaces):
        self.root = tempfile.mkdtemp(prefix="mumath-sandbox-")
        self.cgroups = _make_cgroups(limits)
        root_caller = os.geteuid() == 0
        private = bool(namespaces) and limits.get("isolate_files", True)
        limits = dict(limits, namespaces=bool(namespaces), cgroups=[path for path, _, _ in self.cgroups],
                      memory_cgroup=_oom_events_file(self.cgroups) is not None,
                      oom_events=_oom_events_file(self.cgroups), private_root=private,
                      snippet_identity=private and root_caller)
        self.memory_limit = "cgroup" if limits["memory_cgroup"] else "rlimit"
        env = dict(SAFE_ENV, HOME=self.root, TMPDIR=self.root)
        command = [sys.executable, "-I", WORKER_SCRIPT, self.root, json.dumps(limits)]
        if namespaces:
            prefix = list(NAMESPACE_COMMAND)
            if root_caller:
                command = WAIT_FOR_MAPS + command
            else:
                prefix[1:1] = ["--map-root-user"]
            command = prefix + command
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                cwd=self.root, start_new_session=True, bufsize=0)
        except OSError:
            for path, _, _ in self.cgroups:
                _remove_cgroup(path)
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        try:
            if namespaces and root_caller:
                self._map_identities()
            hello = self._read_frame(time.monotonic() + 120)
            if hello.get("id") != "hello" or not hello.get("ready"):
                raise ProtocolError(str(hello.get("error") or "no greeting"))
        except (ProtocolError, OSError) as exc:
            self.kill()
            raise RuntimeError(f"sandbox worker did not start ({exc}; see mumath/sandbox_worker.py)") from None
        self.landlock_abi = int(hello.get("landlock_abi", 0))
        # The Python worker itself: under `unshare --fork` it is the child of the process we started.
        self.pid = _only_child(self.process.pid) if namespaces else self.process.pid

    def _map_identities(self, wait_s=10.0):
        """A root caller's user namespace: 0 stays root (the worker, which builds the private root), and
        SNIPPET_ID is SANDBOX_HOST_ID on the host: the snippets' identity. Then the waiting `sh` may go on."""
        own, deadline = os.readlink("/proc/self/ns/user"), time.monotonic() + wait_s
        while os.readlink(f"/proc/{self.process.pid}/ns/user") == own:  # until `unshare` has unshared
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise ProtocolError("unshare did not create the user namespace")
            time.sleep(0.001)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{self.process.pid}/{name}", "w") as handle:
                handle.write(f"0 0 1\n{SNIPPET_ID} {SANDBOX_HOST_ID} 1\n")
        self.process.stdin.write(b"go\n")

    def _read_exactly(self, size, deadline):
        fd, data = self.process.stdout.fileno(), b""
        while len(data) < size:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise ProtocolError("no reply before the deadline")
            chunk = os.read(fd, size - len(data))
            if not chunk:
                raise ProtocolError("the worker closed its channel")
            data += chunk
        return data

    def _read_frame(self, deadline):
        magic, length = FRAME_HEADER.unpack(self._read_exactly(FRAME_HEADER.size, deadline))
        if magic != FRAME_MAGIC or length > MAX_FRAME_BYTES:
            raise ProtocolError("not a reply frame")
        try:
            message = json.loads(self._read_exactly(length, deadline))
        except ValueError:
            raise ProtocolError("reply is not JSON") from None
        if not isinstance(message, dict):
            raise ProtocolError("reply is not an object")
        return message

    def run(self, request, timeout):
        """Send one request and return its validated reply; raise ProtocolError on anything else."""
        request = dict(request, id=secrets.token_hex(16))  # a fresh nonce: an old or forged reply cannot match
        body = json.dumps(request).encode()
        data = memoryview(FRAME_HEADER.pack(FRAME_MAGIC, len(body)) + body)
        try:
            while data:
                data = data[self.process.stdin.write(data):]
        except (BrokenPipeError, OSError):
            raise ProtocolError("the worker is gone") from None
        reply = self._read_frame(time.monotonic() + timeout)
        if reply.get("id") != request["id"]:
            raise ProtocolError("reply to another request")
        return _result_from(reply)

    def kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.kill()
        self.process.wait()
        for path, _, _ in self.cgroups:
            _remove_cgroup(path)
        shutil.rmtree(self.root, ignore_errors=True)


def _result_from(reply):
    stdout, error, timed_out, seconds = (reply.get(key) for key in ("stdout", "error", "timed_out", "seconds"))
    if not (isinstance(stdout, str) and (error is None or isinstance(error, str)) and isinstance(timed_out, bool)
            and isinstance(seconds, (int, float))):
        raise ProtocolError("reply fields have the wrong types")
    return ExecutionResult(stdout, error, timed_out, float(seconds))


class _NoWorker:
    """Stands in for a worker that could not be restarted; the next snippet that draws it tries again."""
    landlock_abi, pid, memory_limit = 0, None, None

    def run(self, request, timeout):
        raise ProtocolError("no worker could be started")

    def kill(self):
        pass


class SandboxPool:
    """A pool of sandbox workers; `execute` and `execute_many` are safe to call from many threads.

    `namespaces`: None (the default) uses user+pid+mount+net namespaces where the kernel allows them and
    warns once where it does not; False never uses them. With namespaces, `disk_mb` caps the snippet's
    writable tmpfs (its files and its stdout), and `isolate_files=False` leaves out the private root and the
    snippet identity (the sandbox before they existed: for benchmarks/executor.py's comparison only)."""

    def __init__(self, workers=2, timeout=10.0, memory_mb=1024, max_output_chars=4000,
                 max_file_bytes=16 * 2**20, max_processes=64, preimport=None, namespaces=None, disk_mb=64,
                 isolate_files=True):
        self.timeout = float(timeout)
        self.disk_mb = int(disk_mb)
        self.limits = {"timeout": self.timeout, "memory_mb": int(memory_mb), "disk_mb": self.disk_mb,
                       "isolate_files": bool(isolate_files),
                       "max_output_chars": int(max_output_chars), "max_file_bytes": int(max_file_bytes),
                       "max_processes": self._process_cap(max_processes),
                       "preimport": PREIMPORT if preimport is None else list(preimport)}
        self.namespaces = namespaces_available() if namespaces is None else bool(namespaces)
        self._idle = queue.Queue()
        self._all = []
        self._lock = threading.Lock()
        with ThreadPoolExecutor(workers) as starter:
            for worker in starter.map(lambda _: Worker(self.limits, self.namespaces), range(workers)):
                self._all.append(worker)
                self._idle.put(worker)
        self.landlock_abi = self._all[0].landlock_abi
        self.memory_limit = self._all[0].memory_limit  # "cgroup" (real memory) or "rlimit" (address space)
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
        """Run one snippet; `prelude` blocks run first, silently (to carry state across blocks).

        Never raises: a worker that dies, hangs or answers anything but a well-formed reply to this very
        request is replaced, and this snippet alone is reported as a SandboxError."""
        worker = self._idle.get()
        try:
            return worker.run({"code": code, "prelude": list(prelude)}, timeout=self.timeout + 15)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the caller gets a result
            worker = self._replace(worker)
            return ExecutionResult("", f"SandboxError: the worker failed ({exc}); it was replaced", False)
        finally:
            self._idle.put(worker)

    def execute_many(self, codes, preludes=None):
        preludes = preludes or [()] * len(codes)
        return list(self._threads.map(self.execute, codes, preludes))

    def _replace(self, worker):
        worker.kill()
        try:
            fresh = Worker(self.limits, self.namespaces)
        except Exception:  # noqa: BLE001 - retried by the next snippet that draws this slot
            fresh = _NoWorker()
        with self._lock:
            if worker in self._all:
                self._all[self._all.index(worker)] = fresh
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


_namespace_support = {}


def namespaces_available():
    """Whether this kernel lets us start a worker in its own namespaces (probed once); warns once if not."""
    if "ok" not in _namespace_support:
        try:  # the whole thing: namespaces, identity maps, private root (a worker that imports nothing)
            Worker({"timeout": 5.0, "memory_mb": 256, "disk_mb": 1, "max_output_chars": 100,
                    "max_file_bytes": 2**20, "max_processes": 64, "preimport": []}, True).kill()
            ok, reason = True, ""
        except (OSError, RuntimeError) as exc:
            ok, reason = False, str(exc)[-300:]
        _namespace_support["ok"] = ok
        if not ok:
            warnings.warn(
                "mumath sandbox: user/pid/mount/net namespaces are not available here "
                f"({reason or 'unshare failed'}); snippets run without them, so they can see other processes "
                "in /proc (as root they run as 'nobody', so they cannot read root's /proc/<pid>/environ), "
                "the host's files and other snippets' folders (what their uid may read), pathname unix "
                "sockets, and the disk is capped per file only; the network is closed by Landlock alone. "
                "See docs/sandbox-isolation.md.", RuntimeWarning, stacklevel=3)
    return _namespace_support["ok"]


def _owner(pid):
    """The uid owning /proc/<pid> (None if the process is gone)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _only_child(pid, wait_s=5.0):
    """The one child of `pid` (the worker under `unshare --fork`), found in the caller's view of /proc."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        children = descendants_of(pid)
        if children:
            return children[0]
        time.sleep(0.01)
    return pid


CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"
_cgroup_names = itertools.count()


def _make_cgroups(limits):
    """A memory cgroup (real memory: `memory_mb`) and a pids cgroup (`max_processes`) for one worker's snippets,
    cgroup v1 or v2, as children of the caller's own cgroups; [(path, controller, oom_events_file)], empty where
    none can be made (not root, read-only cgroupfs, v2 without delegation): then rlimits are the fallback."""
    memory = limits["memory_mb"] * 2**20
    wanted = {"memory": {1: [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)],
                         2: [("memory.max", memory), ("memory.swap.max", 0), ("memory.oom.group", 1)]},
              "pids": {1: [("pids.max", limits["max_processes"])], 2: [("pids.max", limits["max_processes"])]}}
    made = []
    for controller, settings in wanted.items():
        base = _cgroup_base(controller)
        if base is None:
            continue
        parent, version = base
        path = os.path.join(parent, f"mumath-sandbox-{os.getpid()}-{next(_cgroup_names)}")
        try:
            os.mkdir(path)
            for name, value in settings[version]:
                _write_setting(path, name, value, required=name in ("memory.limit_in_bytes", "memory.max",
                                                                     "pids.max"))
        except OSError:
            _remove_cgroup(path)
            continue
        events = {1: "memory.oom_control", 2: "memory.events"}[version] if controller == "memory" else None
        made.append((path, controller, events and os.path.join(path, events)))
    return made


def _write_setting(path, name, value, required):
    try:
        with open(os.path.join(path, name), "w") as handle:
            handle.write(str(value))
    except OSError:
        if required:
            raise


def _cgroup_base(controller):
    """(the caller's own cgroup directory for `controller`, cgroup version) if we may create children there."""
    if os.geteuid() != 0:
        return None
    try:
        with open(PROC_SELF_CGROUP) as handle:
            lines = [line.rstrip("\n").split(":", 2) for line in handle if line.count(":") >= 2]
    except OSError:
        return None
    for _, controllers, own in lines:  # cgroup v1: one hierarchy per controller (or group of controllers)
        if controller in controllers.split(","):
            for mount in (os.path.join(CGROUP_ROOT, controllers), os.path.join(CGROUP_ROOT, controller)):
                base = os.path.join(mount, own.lstrip("/"))
                if os.path.isdir(base) and os.access(base, os.W_OK):
                    return base, 1
            return None
    for hierarchy, controllers, own in lines:  # cgroup v2: the unified hierarchy
        if hierarchy == "0" and not controllers:
            for mount in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
                base = os.path.join(mount, own.lstrip("/"))
                if _v2_delegates(mount, base, controller):
                    return base, 2
    return None


def _v2_delegates(mount, base, controller):
    """Whether children of `base` get `controller` (enabling it where allowed: not where `base` holds processes)."""
    try:
        with open(os.path.join(mount, "cgroup.controllers")) as handle:
            if controller not in handle.read().split():
                return False
        subtree = os.path.join(base, "cgroup.subtree_control")
        with open(subtree) as handle:
            if controller in handle.read().split():
                return True
        with open(subtree, "w") as handle:
            handle.write(f"+{controller}")
        return True
    except OSError:
        return False


def _oom_events_file(cgroups):
    return next((events for _, controller, events in cgroups if controller == "memory"), None)


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
