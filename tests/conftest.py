"""Shared fixtures: the benchmark data folder, the embedded model, and a real OpenAI-compatible server.

The server is llama-cpp-python's (`python -m llama_cpp.server`) serving the embedded GGUF on loopback;
`make test` installs it. Nothing on the HTTP path is mocked.
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


@pytest.fixture(scope="session")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="make test installs llama-cpp-python[server]") \
        if os.environ.get("CI") != "true" else __import__("llama_cpp.server")
    from mumath.models import embedded_gguf_path

    server = LlamaServer(embedded_gguf_path(), free_port()).start()
    yield server
    server.stop()
