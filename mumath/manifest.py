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

PACKAGES = ["mumath", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
            "papermill", "math-verify", "sympy", "numpy", "openai", "datasketch", "matplotlib",
            "llama_cpp_python", "gguf"]
INPUTS_FILE = "inputs.txt"


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def sha256_file(path, chunk=2**20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path):
    """A file's sha256; a folder's is the sha256 over its files' relative names and hashes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


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
    """Called by steps: note files or folders they read, to be hashed into the manifest."""
    if not run_dir:
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / INPUTS_FILE, "a") as handle:
        for path in paths:
            handle.write(str(Path(path).resolve()) + "\n")


class Manifest:
    def __init__(self, run_dir, params_file, run, plan):
        self.path = Path(run_dir) / "manifest.json"
        previous = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data = {
            "run": run, "params_file": str(params_file), "params": redact(plan),
            "seeds": {step: params.get("seed") for step, params in plan.items() if "seed" in params},
            "git": git_state(), "packages": package_versions(), "hardware": hardware(),
            "started": now(), "ended": None, "status": "running",
            "steps": previous.get("steps", {}), "inputs": previous.get("inputs", {}),
        }
        self.add_inputs([params_file])
        self.write()

    def add_inputs(self, paths):
        for path in paths:
            path = Path(path)
            if path.exists():
                self.data["inputs"][str(path)] = sha256_path(path)

    def fold_recorded_inputs(self):
        listed = Path(self.path.parent) / INPUTS_FILE
        if listed.exists():
            self.add_inputs(sorted(set(listed.read_text().split())))

    def step(self, name):
        return self.data["steps"].get(name, {})

    def set_step(self, name, **fields):
        self.data["steps"].setdefault(name, {}).update(fields)
        self.write()

    def finish(self, status):
        self.data.update(status=status, ended=now())
        self.write()

    def write(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)  # atomic: a killed run never leaves half a manifest
