"""A managed inference server: a step starts it, points its teacher or evaluation at it, and stops it.

A params file says ``server: {engine: vllm, model: outputs/run/stage2/final, max_model_len: 4096}`` (the
evaluation step) or ``teacher_server: {...}`` (augment, synthesize). The step then

1. builds the engine's command line (`server_command`: data, tested as such for vLLM and SGLang),
2. starts it on a free loopback port in its own process group, its log in ``<step folder>/server.log``,
3. waits until ``/health`` or ``/v1/models`` answers (and fails with the log's last lines if the process exits first),
4. sends its requests to ``http://127.0.0.1:<port>/v1`` through the ``openai`` completions backend, with
   the model's tokenizer formatting prompts (so the BOS rule and the prompt format hold, see
   `mumath.prompts`) and `max_model_len` clamping each request's ``max_tokens``,
5. stops it when the step ends, also on failure: SIGTERM to the group, SIGKILL after a grace period. If
   the step's own process dies (a killed kernel), the kernel sends the server SIGTERM (``PR_SET_PDEATHSIG``).

Engines: ``vllm`` (prefix caching on, tensor / data parallel, ``--max-num-seqs``), ``sglang`` (radix prefix
cache is its default), ``transformers`` (``transformers serve``, CPU or GPU) and ``llamacpp``
(llama-cpp-python's server, a GGUF file). vLLM and SGLang keep a GPU busy only with hundreds of requests
in flight: their default client concurrency here is `DEFAULT_CONCURRENCY` (512), not the 16 of a
local run.
"""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path

ENGINES = ("vllm", "sglang", "transformers", "llamacpp")
# Requests in flight from the client (and vLLM's / SGLang's own cap on running sequences).
DEFAULT_CONCURRENCY = {"vllm": 512, "sglang": 512, "transformers": 16, "llamacpp": 4}


class ServerError(RuntimeError):
    pass


@dataclass
class ServerSpec:
    engine: str
    model: str                          # 'embedded', a folder or a hub id (llamacpp: a .gguf file or 'embedded')
    served_name: str = None             # the name requests use; default: 'mumath' (transformers: the folder)
    max_model_len: int = None           # context window (prompt + new tokens); None: the model's own
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_num_seqs: int = None            # sequences the server runs at once; None: DEFAULT_CONCURRENCY
    gpu_memory_utilization: float = None
    dtype: str = None                   # None: the engine's default ('auto')
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = None                    # None: a free port
    startup_timeout: float = 1800.0     # seconds to wait for /v1/models (a 7B model loads in 1-3 min)
    extra_args: list = field(default_factory=list)  # appended to the command line as given
    env: dict = field(default_factory=dict)         # extra environment variables for the server

    @classmethod
    def from_dict(cls, data, parameter="server"):
        if isinstance(data, ServerSpec):
            return data
        if not isinstance(data, dict):
            raise ServerError(f"parameter '{parameter}' must be a mapping such as {{engine: vllm, model: ...}}, "
                              f"got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ServerError(f"parameter '{parameter}': unknown key(s) {unknown}; known: {sorted(known)}")
        for key in ("engine", "model"):
            if not data.get(key):
                raise ServerError(f"parameter '{parameter}': '{key}' is required")
        spec = cls(**data)
        if spec.engine not in ENGINES:
            raise ServerError(f"parameter '{parameter}.engine' is '{spec.engine}'; one of {list(ENGINES)}")
        for key in ("tensor_parallel_size", "data_parallel_size"):
            if int(getattr(spec, key)) < 1:
                raise ServerError(f"parameter '{parameter}.{key}' must be at least 1")
        return spec

    @property
    def concurrency(self):
        return self.max_num_seqs or DEFAULT_CONCURRENCY[self.engine]


def model_location(spec):
    """The path (or hub id) the engine loads: 'embedded' becomes its safetensors folder, or its GGUF."""
    from .models import embedded_gguf_path, resolve_model_path

    if spec.engine == "llamacpp":
        return str(embedded_gguf_path()) if spec.model == "embedded" else str(spec.model)
    return resolve_model_path(spec.model)


def served_name(spec):
    if spec.engine == "transformers":
        return model_location(spec)  # `transformers serve <folder>` answers only to the folder's name
    return spec.served_name or "mumath"


def _console_script(name):
    """The venv's own console script (beside this interpreter), else the one on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def server_command(spec, port):
    """The command line that starts `spec`'s engine on `port` (a list; no shell)."""
    model, name, host = model_location(spec), served_name(spec), spec.host
    if spec.engine == "vllm":
        command = [_console_script("vllm"), "serve", model, "--host", host, "--port", str(port),
                   "--served-model-name", name, "--enable-prefix-caching",
                   "--tensor-parallel-size", str(spec.tensor_parallel_size),
                   "--data-parallel-size", str(spec.data_parallel_size),
                   "--max-num-seqs", str(spec.concurrency), "--seed", str(spec.seed)]
        optional = {"--max-model-len": spec.max_model_len, "--gpu-memory-utilization": spec.gpu_memory_utilization,
                    "--dtype": spec.dtype}
    elif spec.engine == "sglang":
        command = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", host,
                   "--port", str(port), "--served-model-name", name, "--tp-size", str(spec.tensor_parallel_size),
                   "--dp-size", str(spec.data_parallel_size), "--max-running-requests", str(spec.concurrency),
                   "--random-seed", str(spec.seed)]
        optional = {"--context-length": spec.max_model_len, "--mem-fraction-static": spec.gpu_memory_utilization,
                    "--dtype": spec.dtype}
    elif spec.engine == "transformers":
        command = [sys.executable, "-m", "transformers.cli.transformers", "serve", model, "--host", host,
                   "--port", str(port), "--default-seed", str(spec.seed)]
        optional = {"--dtype": spec.dtype}
    else:  # llamacpp
        command = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", host, "--port", str(port),
                   "--model_alias", name, "--seed", str(spec.seed)]
        optional = {"--n_ctx": spec.max_model_len}
    for flag, value in optional.items():
        if value is not None:
            command += [flag, str(value)]
    return command + [str(arg) for arg in spec.extra_args]


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """In the child before exec: SIGTERM it when the process that started it dies (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ManagedServer:
    """A server process for the length of a ``with`` block (or `start` ... `stop`)."""

    def __init__(self, spec, log_path, stop_grace=30.0, print_fn=print):
        self.spec = ServerSpec.from_dict(spec)
        self.log_path, self.stop_grace, self.print_fn = Path(log_path), stop_grace, print_fn
        self.process, self.port = None, None

    @property
    def base_url(self):
        return f"http://{self.spec.host}:{self.port}/v1"

    @property
    def served_name(self):
        return served_name(self.spec)

    def start(self):
        self.port = self.spec.port or free_port(self.spec.host)
        command = server_command(self.spec, self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **{str(k): str(v) for k, v in self.spec.env.items()})
        self.print_fn(f"[server] {' '.join(command)}  (log: {self.log_path})")
        with open(self.log_path, "ab") as log:
            log.write(f"# mumath: {self.base_url} <- {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        try:
            self.wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_healthy(self):
        deadline = time.time() + self.spec.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the {self.spec.engine} server exited with {self.process.returncode} before "
                                  f"it answered; last lines of {self.log_path}:\n{self.log_tail()}")
            if self.answers():
                return
            time.sleep(1.0)
        raise ServerError(f"the {self.spec.engine} server did not answer {self.base_url}/models within "
                          f"{self.spec.startup_timeout:.0f} s (parameter 'startup_timeout'); last lines of "
                          f"{self.log_path}:\n{self.log_tail()}")

    def answers(self):
        """Whether the server is up: ``/health`` (vLLM, SGLang, transformers serve) or ``/v1/models``
        (llama.cpp; `transformers serve`'s fails without a Hugging Face cache folder) answers 200."""
        for url in (self.base_url.removesuffix("/v1") + "/health", self.base_url + "/models"):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
        return False

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self):
        """SIGTERM to the server's process group, SIGKILL after `stop_grace` seconds; safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(self.stop_grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        self.print_fn(f"[server] stopped the {self.spec.engine} server on port {self.port}")

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def client_settings(self):
        """What a step's backend parameters become while this server runs."""
        return {"backend": "openai", "base_url": self.base_url, "api_model": self.served_name,
                "context_length": self.spec.max_model_len, "max_concurrency": self.spec.concurrency}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
