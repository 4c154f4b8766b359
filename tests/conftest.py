"""Shared fixtures: the benchmark data folder, the embedded model, and real OpenAI-compatible servers.

`llama_server` is llama-cpp-python's (`python -m llama_cpp.server`) serving the embedded GGUF on loopback
(one request at a time); `batching_server` is `transformers serve --continuous-batching` serving the
embedded safetensors folder on CPU (batches concurrent requests). `make test` installs both. Nothing on
the HTTP path is mocked.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tests read the benchmark copy shipped inside the package, never a data folder of this machine.
os.environ.pop("MUMATH_DATA_DIR", None)


@pytest.fixture(scope="session")
def data_dir():
    """The shipped data folder (``mumath/benchmark_data``, files gzip-compressed)."""
    from mumath.data import SHIPPED_DATA

    return SHIPPED_DATA


@pytest.fixture(scope="session")
def embedded_dir():
    from mumath.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def embedded(embedded_dir):
    from mumath.models import load_model

    return load_model("embedded")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """A llama.cpp OpenAI-compatible server on loopback that a test may stop and start again."""

    def __init__(self, gguf, port):
        self.gguf, self.port, self.process = gguf, port, None
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def start(self, timeout=180):
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "4096", "--n_threads", "2", "--seed", "0"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.process.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(self.base_url + "/models", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"llama.cpp server did not answer within {timeout}s; see {log.name}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class TransformersServer(LlamaServer):
    """`transformers serve --continuous-batching` on loopback: concurrent requests share engine steps.

    Its continuous batching engine takes its sampling settings from the first request and has no stop
    strings (the client cuts the text; see `OpenAIBackend`). The KV cache is sized explicitly.
    """

    def __init__(self, model_dir, port, num_blocks=512, block_size=32, max_batch_tokens=256):
        super().__init__(None, port)
        self.model_dir = str(model_dir)
        self.options = ["--cb-num-blocks", str(num_blocks), "--cb-block-size", str(block_size),
                        "--cb-max-batch-tokens", str(max_batch_tokens)]

    def start(self, timeout=300):
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"transformers-serve-{self.port}.log", "w")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model_dir,
             "--continuous-batching", "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1",
             "--port", str(self.port), *self.options], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"transformers serve did not answer within {timeout}s; see {log.name}")


@pytest.fixture(scope="session")
def batching_server(embedded_dir):
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving] (make test installs it)")
    server = TransformersServer(embedded_dir, free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="make test installs llama-cpp-python[server]") \
        if os.environ.get("CI") != "true" else __import__("llama_cpp.server")
    from mumath.models import embedded_gguf_path

    server = LlamaServer(embedded_gguf_path(), free_port()).start()
    yield server
    server.stop()
