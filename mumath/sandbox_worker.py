"""The long-lived worker process behind `mumath.executor.SandboxPool`.

Run as ``python -I sandbox_worker.py ROOT LIMITS_JSON`` (by the caller, inside its own namespaces where the
kernel allows). It reads framed requests on stdin and answers framed replies on stdout (see `write_frame`).
It pre-imports the heavy libraries once, then *forks* a fresh child for every snippet, so a snippet starts in
milliseconds yet never sees another snippet's state (unless the caller sends a ``prelude``). The child is
confined before it runs anything (see `confine_child`) and holds no descriptor of the control channel: it
reports through a pipe of its own, which only this worker reads.

This file imports nothing from `mumath`: it runs under ``python -I`` as an unprivileged user and must not
depend on the project being importable.
"""
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time

PR_SET_DUMPABLE, PR_SET_KEEPCAPS, PR_CAPBSET_DROP = 4, 8, 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4
CAP_DAC_READ_SEARCH = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
FRAME_MAGIC = b"MMSB"
FRAME_HEADER = struct.Struct(">4sI")
MAX_FRAME_BYTES = 8 * 2**20
RESULT_FD = 3  # the snippet child's own result pipe; 0, 1, 2 are /dev/null, stdout.txt, stdout.txt
UNPRIVILEGED_UID = 65534  # "nobody": who a snippet runs as when the caller is root and namespaces are off
# Inside the user namespace a root caller maps two identities: 0 (the worker, the caller's root) and
# SNIPPET_ID, mapped by the caller to a host uid and gid that own nothing (executor.SANDBOX_HOST_ID).
SNIPPET_ID = 1
SANDBOX_DIR = "/sandbox"  # the worker's folder inside its private root; the snippet's folder is below it
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
            4096: MS_RELATIME}  # statvfs f_flag bits -> mount flags (a remount must keep the locked ones)
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "random", "urandom")
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL = 1, 2
LANDLOCK_NET_BIND_TCP, LANDLOCK_NET_CONNECT_TCP = 1, 2
FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
FS_MAKE_ALL = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14

_libc = ctypes.CDLL(None, use_errno=True)


class LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class LandlockPathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi():
    """The kernel's Landlock ABI version, 0 where Landlock is missing (old kernel, seccomp, non-x86)."""
    if os.uname().machine not in ("x86_64", "aarch64"):
        return 0
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


def apply_landlock(writable_dir):
    """Allow writes only beneath `writable_dir` (and to /dev/null), no TCP, no signals out of the domain."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    write_rights = FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_ALL
    write_rights |= (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    attr = LandlockRulesetAttr(write_rights, 0, 0)
    if abi >= 4:
        attr.handled_access_net = LANDLOCK_NET_BIND_TCP | LANDLOCK_NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = LANDLOCK_SCOPE_SIGNAL | LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
    size = ctypes.sizeof(LandlockRulesetAttr) if abi >= 4 else 8
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                            ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    file_rights = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    for path, rights in ((writable_dir, write_rights), ("/dev/null", file_rights)):
        fd = os.open(path, os.O_PATH)
        rule = LandlockPathBeneathAttr(rights, fd)
        _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule),
                      ctypes.c_uint32(0))
        os.close(fd)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    ok = _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) == 0
    os.close(ruleset)
    return abi if ok else 0


def virtual_memory_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


class CapUserHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapUserData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capability_bounding_set(keep=()):
    """No capability but `keep` can come back through execve (needs CAP_SETPCAP, so it runs while root)."""
    for capability in range(64):
        if capability in keep:
            continue
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:
                break  # EINVAL: past the kernel's last capability
            raise OSError(ctypes.get_errno(), "cannot drop capability", str(capability))
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def set_capabilities(keep=()):
    """Effective, permitted and inheritable sets = `keep` (usually nothing): root (inside or outside a user
    namespace) keeps only what its uid owns, so it cannot unmount the fresh /proc, trace the worker, or
    override file modes."""
    mask = sum(1 << capability for capability in keep)
    header = CapUserHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapUserData * 2)((mask, mask, mask), (0, 0, 0))
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    for capability in keep:  # ambient: kept across execve, so a subprocess can read what the snippet can
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, capability, 0, 0)


def open_cgroups(limits):
    """Descriptors of the worker's cgroup files, opened before the private root hides /sys."""
    limits["cgroup_fds"] = [os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
                            for path in limits.get("cgroups", [])]
    if limits.get("oom_events"):
        limits["oom_events_fd"] = os.open(limits["oom_events"], os.O_RDONLY)


def join_cgroups(limits):
    """Move this process (and so everything it forks) into the worker's memory and pids cgroups.

    Only the snippet's processes are in them, never the worker, so an out-of-memory kill hits the snippet."""
    for fd in limits.get("cgroup_fds", []):
        os.write(fd, str(os.getpid()).encode())


def _mount(source, target, fstype, flags, data=None):
    encode = (lambda text: None if text is None else text.encode())
    if _libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _bind_read_only(source, target):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    # A remount in a user namespace must keep the flags the source mount has locked (nosuid, nodev, ...).
    locked = sum(flag for bit, flag in ST_TO_MS.items() if os.statvfs(source).f_flag & bit)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | locked)


def visible_paths():
    """What a snippet can see of the host, read-only: the system folders and this Python with its packages.

    Only `sys.path` entries inside the Python installation count: this script's own folder (the caller's
    checkout) and an editable install's project folder are the caller's files, not the interpreter's."""
    prefixes = sorted({sys.prefix, sys.base_prefix, sys.exec_prefix})
    inside = [path for path in sys.path if os.path.isdir(path) and any(
        os.path.realpath(path) == os.path.realpath(prefix) or
        os.path.realpath(path).startswith(os.path.realpath(prefix).rstrip("/") + "/") for prefix in prefixes)]
    wanted = [path for path in SYSTEM_PATHS if os.path.lexists(path)]
    wanted += sorted(set(prefixes) | set(inside))
    chosen = [path for path in wanted if os.path.islink(path) and os.path.dirname(path) == "/"]  # /bin -> usr/bin
    for path in wanted:
        if path in chosen:
            continue
        real = os.path.realpath(path)
        if not any(real == done or real.startswith(done.rstrip("/") + "/") for done in
                   (os.path.realpath(seen) for seen in chosen if not os.path.islink(seen))):
            chosen.append(path)
    return chosen


def build_private_root(host_dir, limits):
    """Replace this mount namespace's view of the host by a private root and return the worker's folder in it.

    The root is a tmpfs of `disk_mb` MiB, the only writable place: the snippets' files live there, so they
    cannot fill the host's disk, and nothing of the host is there but `visible_paths` (read-only), four
    devices and a fresh /proc. Other snippets' folders, the caller's files and pathname unix sockets
    (under /tmp, /run, /home, ...) do not exist in it."""
    _mount("tmpfs", host_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(limits['disk_mb'])}m,mode=755")
    for path in visible_paths():
        target = host_dir + path
        if os.path.islink(path) and os.path.dirname(path) == "/":
            os.symlink(os.readlink(path), target)  # /bin -> usr/bin: the link, not a second mount
        else:
            _bind_read_only(path, target)
    os.makedirs(host_dir + "/dev", exist_ok=True)
    for device in DEVICES:
        if os.path.exists(f"/dev/{device}"):
            open(f"{host_dir}/dev/{device}", "a").close()
            _mount(f"/dev/{device}", f"{host_dir}/dev/{device}", None, MS_BIND)
    os.makedirs(host_dir + "/proc")
    _mount("proc", host_dir + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # exist_ok: a Python installed under /tmp (a venv in a temporary checkout) is already bound below it
    os.makedirs(host_dir + "/tmp", exist_ok=True)
    os.makedirs(host_dir + SANDBOX_DIR)
    os.chdir(host_dir)
    if _libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root failed")
    if _libc.umount2(b".", MNT_DETACH) != 0:  # the host's tree, stacked below the new root, goes away
        raise OSError(ctypes.get_errno(), "cannot detach the host's root")
    os.chdir("/")
    return SANDBOX_DIR


def become_snippet_identity(workdir):
    """Inside the user namespace: run as SNIPPET_ID, which the caller mapped to a host uid owning nothing."""
    os.chown(workdir, SNIPPET_ID, SNIPPET_ID)
    os.setgroups([])
    os.setgid(SNIPPET_ID)
    os.setuid(SNIPPET_ID)


def become_nobody(workdir):
    """Without namespaces, a root caller's snippet runs as `nobody`, so it cannot open root's
    /proc/<pid>/environ (the caller's secrets: that takes the same uid or CAP_SYS_PTRACE). It keeps one
    capability, CAP_DAC_READ_SEARCH, to read what root could (the Python install may live under /root);
    writing stays limited to its folder."""
    os.chown(workdir, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(UNPRIVILEGED_UID)
    os.setuid(UNPRIVILEGED_UID)


def confine_child(workdir, limits):
    """Everything a snippet's process gives up before its first line runs."""
    os.setpgid(0, 0)
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = workdir
    if not limits.get("memory_cgroup"):
        # Fallback only: the address-space cap counts reserved, not used, memory (threads reserve a lot), and
        # it counts what the pre-imported zygote already maps, so it is added on top.
        address_space = virtual_memory_bytes() + limits["memory_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    cpu = int(limits["timeout"]) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_bytes"], limits["max_file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_processes"], limits["max_processes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead
    keep = (CAP_DAC_READ_SEARCH,) if os.geteuid() == 0 and not limits.get("namespaces") else ()
    drop_capability_bounding_set(keep)
    if keep:
        become_nobody(workdir)
    elif limits.get("snippet_identity"):
        become_snippet_identity(workdir)
    set_capabilities(keep)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot set no_new_privs")
    apply_landlock(workdir)


class BoundedWriter:
    """stdout for a snippet: keeps at most `limit` characters, drops the rest (still counted)."""

    def __init__(self, fd, limit):
        self.fd, self.limit, self.written = fd, limit, 0

    def write(self, text):
        text = str(text)
        room = self.limit - self.written
        if room > 0:
            os.write(self.fd, text[:room].encode("utf-8", "replace"))
        self.written += len(text)
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def isolate_descriptors(workdir, result_fd):
    """0 = /dev/null, 1 and 2 = stdout.txt, RESULT_FD = this child's result pipe; every other descriptor,
    the worker's control channel included, is closed before the snippet runs."""
    out_fd = os.open(os.path.join(workdir, "stdout.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open("/dev/null", os.O_RDWR)
    os.dup2(null_fd, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.dup2(result_fd, RESULT_FD, inheritable=False)
    os.closerange(RESULT_FD + 1, max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024))


def run_snippet(request, workdir, limits, result_fd):
    """Body of the forked child: confine, run prelude and code, report the error (if any) on the result pipe."""
    try:
        join_cgroups(limits)  # first: isolate_descriptors closes the cgroup descriptors
        joined = None
    except OSError as exc:
        joined = exc
    isolate_descriptors(workdir, result_fd)
    try:
        if joined:
            raise joined
        confine_child(workdir, limits)
    except Exception as exc:  # fail closed: nothing runs unconfined
        report(f"SandboxError: could not confine the snippet: {exc}")
        os._exit(1)
    snippet_pid = os.getpid()  # processes the snippet forks run this code too; only this one reports
    writer = BoundedWriter(1, limits["max_output_chars"] + 1)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    error = None
    try:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        for block in request.get("prelude", []):
            try:
                exec(compile(block, "<prelude>", "exec"), namespace)
            except BaseException:
                pass
        sys.stdout = sys.stderr = writer
        exec_with_last_expression(request["code"], namespace)
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            error = f"SystemExit: {exit_.code}"
    except BaseException as exc:  # the snippet's own failure is a result, not a crash
        error = f"{type(exc).__name__}: {exc}".strip()
    if os.getpid() != snippet_pid:
        os._exit(0)
    report(error)
    os._exit(0)


def report(error):
    body = json.dumps({"error": error}).encode()
    os.write(RESULT_FD, FRAME_HEADER.pack(FRAME_MAGIC, len(body)) + body)


def exec_with_last_expression(code, namespace):
    """Run `code`; like a notebook cell, print the value of a final bare expression if it is not None."""
    import ast
    tree = ast.parse(code, "<code>")
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body.pop()
    exec(compile(tree, "<code>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
        if value is not None:
            print(repr(value) if not isinstance(value, str) else value)


def descendants_of(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_all_descendants(snippet_pgid=None, deadline_s=10.0):
    """SIGKILL every process below this worker; it is their subreaper, so orphans are found too.

    The snippet's process group goes first, in one kill(2): a fork racing a group kill fails in the
    kernel, so a fork bomb that stayed in its group cannot outrun it. The sweep catches the rest
    (processes that left the group with setsid).
    """
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if snippet_pgid is not None:
            try:
                os.killpg(snippet_pgid, signal.SIGKILL)
            except OSError:
                pass
        victims = descendants_of(os.getpid())
        if not victims:
            return True
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap()
        time.sleep(0.005)
    return False


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def read_text(path, limit):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit * 4 + 4).decode("utf-8", "replace")
    except OSError:
        return ""


def drain(fd, limit=1 << 16):
    """Everything in the result pipe (all its writers are dead by now), at most `limit` bytes."""
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size <= limit:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    os.close(fd)
    return b"".join(chunks)


def reported_error(raw):
    """The child's own report: the last frame in its result pipe, which must end it. The snippet may write to
    that pipe too (it is its own), but what it writes comes before the child's report."""
    position = raw.rfind(FRAME_MAGIC)
    while position >= 0:
        body = raw[position + FRAME_HEADER.size:]
        header = raw[position:position + FRAME_HEADER.size]
        if len(header) == FRAME_HEADER.size and FRAME_HEADER.unpack(header)[1] == len(body):
            try:
                error = json.loads(body)["error"]
                if error is None or isinstance(error, str):
                    return True, error
            except (ValueError, KeyError, TypeError):
                pass
            break
        position = raw.rfind(FRAME_MAGIC, 0, position)
    return False, "SandboxError: the snippet garbled its result pipe"


def oom_kills(limits):
    """How many processes the memory cgroup's OOM killer has killed so far (None without a memory cgroup)."""
    fd = limits.get("oom_events_fd")
    if fd is None:
        return None
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        for line in os.read(fd, 1 << 16).decode().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def execute(request, root, limits):
    workdir = os.path.join(root, "snippet")
    shutil.rmtree(workdir, ignore_errors=True)
    os.mkdir(workdir, 0o700)
    oom_before = oom_kills(limits)
    result_read, result_write = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(result_read)
            run_snippet(request, workdir, limits, result_write)
        finally:
            os._exit(1)
    os.close(result_write)
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], limits["timeout"])
    timed_out = not ready
    status = None
    if not timed_out:
        _, status = os.waitpid(pid, 0)
    # On timeout, the snippet; otherwise whatever it left running in the background.
    if not kill_all_descendants(snippet_pgid=pid):
        os._exit(3)  # could not clean up: die, and let the caller replace this worker
    os.close(pidfd)
    raw = drain(result_read)
    stdout = read_text(os.path.join(workdir, "stdout.txt"), limits["max_output_chars"])
    error = None
    if not timed_out:
        reported, error = reported_error(raw) if raw else (False, None)
        oom_after = oom_kills(limits)
        if not reported and oom_before is not None and oom_after is not None and oom_after > oom_before:
            error = (f"MemoryError: the snippet used more than memory_mb={limits['memory_mb']} MiB "
                     "and was killed")
        elif not reported and status is not None and not error:
            if os.WIFSIGNALED(status):
                error = f"Killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
            elif os.WEXITSTATUS(status) != 0:
                error = f"Process exited with code {os.WEXITSTATUS(status)}"
    shutil.rmtree(workdir, ignore_errors=True)
    return {"stdout": stdout, "error": error or None, "timed_out": timed_out,
            "seconds": round(time.monotonic() - started, 4)}


def read_exactly(fd, size):
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(fd):
    """One request from the caller: magic, length, JSON; None at the end of the stream or on garbage."""
    header = read_exactly(fd, FRAME_HEADER.size)
    if header is None:
        return None
    magic, length = FRAME_HEADER.unpack(header)
    if magic != FRAME_MAGIC or length > MAX_FRAME_BYTES:
        return None
    body = read_exactly(fd, length)
    return None if body is None else json.loads(body)


def write_frame(fd, message):
    body = json.dumps(message).encode()
    data = FRAME_HEADER.pack(FRAME_MAGIC, len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def main():
    root, limits = sys.argv[1], json.loads(sys.argv[2])
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    open_cgroups(limits)
    if limits.get("private_root"):
        try:
            root = build_private_root(root, limits)
        except OSError as exc:  # fail closed: the caller falls back (with its warning) or gives up
            write_frame(os.dup(1), {"id": "hello", "ready": False, "error": f"private root: {exc}"})
            return
    # Not dumpable: a snippet (same uid, no capabilities) cannot open /proc/<worker>/fd/* or environ.
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    for module in limits.get("preimport", []):
        try:
            __import__(module)
        except Exception:
            pass
    # The control channel moves to descriptors that no child inherits; 0 and 1 become /dev/null so that
    # stray prints cannot corrupt the protocol.
    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    os.chmod(root, 0o711)  # a snippet running as `nobody` must reach root/snippet
    write_frame(replies, {"id": "hello", "ready": True, "landlock_abi": landlock_abi()})
    while True:
        request = read_frame(requests)
        if request is None:
            return
        reply = execute(request, root, limits)
        reply["id"] = request.get("id")
        write_frame(replies, reply)


if __name__ == "__main__":
    main()
