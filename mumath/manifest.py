"""`outputs/<run>/manifest.json`: what a run was given, what it read, where and how it ran.

Steps add the files they read with `record_inputs(run_dir, paths)`; the runner hashes them (sha256) into
the manifest after each step. Parameters pass through `config.redact`, and no environment variable is
ever copied, so API keys cannot land here.
"""
import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from .config import REPO_ROOT, redact
from .records import read_json, write_json

PACKAGES = ["mumath", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
            "papermill", "math-verify", "sympy", "numpy", "openai", "datasketch", "matplotlib",
            "llama_cpp_python", "gguf", "tensorboard", "huggingface_hub"]
INPUTS_FILE = "inputs.txt"


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


_MEMO = {}
_MEMO_FILE = "sha256-memo.json"
_MEMO_MIN_BYTES = 16 * 2**20  # files this large (model weights) are remembered across processes


def _memo_path():
    from .models import cache_dir

    return cache_dir() / _MEMO_FILE


def _load_memo():
    if not _MEMO:
        try:
            _MEMO.update(json.loads(_memo_path().read_text()))
        except (OSError, ValueError):
            pass
        _MEMO.setdefault("", "loaded")
    return _MEMO


def sha256_file(path, chunk=2**20):
    """sha256 of a file. A file's hash is remembered under (path, inode, size, mtime), the check git and
    make rely on, so re-checking an unchanged multi-GB checkpoint costs a stat, not a read."""
    path = os.path.realpath(path)
    stat = os.stat(path)
    key = f"{path}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}"
    memo = _load_memo()
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    if stat.st_size >= _MEMO_MIN_BYTES:
        try:
            from .records import write_json

            write_json(_memo_path(), {k: v for k, v in memo.items() if k})
        except OSError:
            pass  # a read-only cache folder only costs re-hashing
    return memo[key]


def folder_hashes(path, skip=("__pycache__",)):
    """{relative name: sha256} of every file under a folder (skipping `skip` folders and *.pyc)."""
    path = Path(path)
    return {str(file.relative_to(path)): sha256_file(file)
            for file in sorted(path.rglob("*"))
            if file.is_file() and file.suffix != ".pyc" and not set(file.relative_to(path).parts) & set(skip)}


def sha256_path(path):
    """A file's sha256; a folder's is the sha256 over its files' relative names and hashes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for name, sha in folder_hashes(path).items():
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()


def package_fingerprint():
    """sha256 over the `mumath` package's files (code, registry, prompts, shipped data)."""
    return sha256_path(Path(__file__).resolve().parent)


def git_state():
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except OSError:
        return {"commit": None, "dirty": None}


def package_versions():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware():
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    try:
        import torch

        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        info["cuda"] = []
    return info


def record_inputs(run_dir, paths):
    """Called by steps: note files or folders they read, to be hashed into the manifest and into the
    step's reuse fingerprint (a later run re-hashes them: a changed input re-runs the step)."""
    if not run_dir:
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / INPUTS_FILE, "a") as handle:
        for path in paths:
            handle.write(str(Path(path).resolve()) + "\n")


class Manifest:
    def __init__(self, run_dir, params_file, run, plan):
        self.path = Path(run_dir) / "manifest.json"
        previous = read_json(self.path) if self.path.exists() else {}
        self.data = {
            "run": run, "params_file": str(params_file), "params": redact(plan),
            "seeds": {step: params.get("seed") for step, params in plan.items() if "seed" in params},
            "git": git_state(), "packages": package_versions(), "hardware": hardware(),
            "started": now(), "ended": None, "status": "running",
            "steps": previous.get("steps", {}), "inputs": previous.get("inputs", {}),
            "failed_attempts": previous.get("failed_attempts", []),
        }
        self.add_inputs([params_file])
        self.write()

    def add_inputs(self, paths):
        for path in paths:
            path = Path(path)
            if path.exists():
                self.data["inputs"][str(path)] = sha256_path(path)

    def take_recorded_inputs(self):
        """The paths steps recorded since the last call (they go into the manifest's inputs too)."""
        listed = Path(self.path.parent) / INPUTS_FILE
        paths = sorted(set(listed.read_text().splitlines())) if listed.exists() else []
        listed.unlink(missing_ok=True)
        self.add_inputs(paths)
        return [path for path in paths if path]

    @staticmethod
    def data_origins(paths, run_dir):
        """{input: where it came from} for the benchmark data among a step's inputs: `shipped` (the copy
        inside the package), `hub` (a Hugging Face dataset) or `local` (data_dir or a file of yours)."""
        from .data import HUB_PREFIX, SHIPPED_DATA

        origins = {}
        for path in paths:
            if path.startswith(HUB_PREFIX):
                origins[path] = "hub"
            elif Path(path).is_relative_to(SHIPPED_DATA):
                origins[str(Path(path).relative_to(SHIPPED_DATA.parent.parent))] = "shipped"
            elif Path(path).suffix in (".jsonl", ".json", ".gz", ".xz") and Path(path).is_file() \
                    and not Path(path).is_relative_to(Path(run_dir).resolve()):
                origins[path] = "local"
        return origins

    def step(self, name):
        return self.data["steps"].get(name, {})

    def set_step(self, name, **fields):
        self.data["steps"].setdefault(name, {}).update(fields)
        self.write()

    def start_attempt(self, attempt):
        """A re-run of a finished step gets its own entry in `failed_attempts` (dropped if it succeeds), so
        the step's own entry stays that of its last good run. Returns a `set_step`-like updater for it."""
        self.data["failed_attempts"].append(attempt)
        self.write()

        def record(step, **fields):
            attempt.update(fields)
            self.write()
        return record

    def drop_attempt(self, attempt):
        self.data["failed_attempts"] = [entry for entry in self.data["failed_attempts"] if entry is not attempt]
        self.write()

    def finish(self, status):
        self.data.update(status=status, ended=now())
        self.write()

    def write(self):
        write_json(self.path, self.data)  # atomic: a killed run never leaves half a manifest
