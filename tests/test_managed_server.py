"""The managed server: command lines as data (vLLM, SGLang), and end to end with `transformers serve` and
llama.cpp's server: started by the step, healthy, evaluated through, stopped after, also on failure."""
import json
import urllib.request

import pytest

from mumath.server import (DEFAULT_CONCURRENCY, ManagedServer, ServerError, ServerSpec, server_command)


def flag(command, name):
    return command[command.index(name) + 1]


def test_vllm_command_line(embedded_dir):
    spec = ServerSpec.from_dict({"engine": "vllm", "model": "embedded", "served_name": "paper-7b",
                                 "max_model_len": 4096, "tensor_parallel_size": 2, "data_parallel_size": 4,
                                 "gpu_memory_utilization": 0.9, "extra_args": ["--enforce-eager"]})
    command = server_command(spec, 8123)
    assert command[0].endswith("vllm") and command[1:3] == ["serve", str(embedded_dir)]
    assert "--enable-prefix-caching" in command and command[-1] == "--enforce-eager"
    assert (flag(command, "--port"), flag(command, "--host")) == ("8123", "127.0.0.1")
    assert flag(command, "--served-model-name") == "paper-7b" and flag(command, "--max-model-len") == "4096"
    assert (flag(command, "--tensor-parallel-size"), flag(command, "--data-parallel-size")) == ("2", "4")
    assert flag(command, "--max-num-seqs") == "512" and flag(command, "--gpu-memory-utilization") == "0.9"
    assert "--dtype" not in command  # unset options are left to the engine


def test_sglang_command_line(embedded_dir):
    spec = ServerSpec.from_dict({"engine": "sglang", "model": "embedded", "max_model_len": 4096,
                                 "tensor_parallel_size": 2, "max_num_seqs": 256})
    command = server_command(spec, 30000)
    assert command[1:3] == ["-m", "sglang.launch_server"] and flag(command, "--model-path") == str(embedded_dir)
    assert flag(command, "--context-length") == "4096" and flag(command, "--tp-size") == "2"
    assert flag(command, "--dp-size") == "1" and flag(command, "--max-running-requests") == "256"
    assert flag(command, "--served-model-name") == "mumath" and flag(command, "--port") == "30000"
    assert "--disable-radix-cache" not in command  # SGLang's prefix cache stays on


def test_concurrency_defaults_keep_a_gpu_busy():
    assert DEFAULT_CONCURRENCY["vllm"] >= 256 and DEFAULT_CONCURRENCY["sglang"] >= 256
    spec = ServerSpec.from_dict({"engine": "vllm", "model": "x/y"})
    served = ManagedServer(spec, "/tmp/unused.log")
    served.port = 1
    assert served.client_settings()["max_concurrency"] == 512


@pytest.mark.parametrize("bad, message", [
    ({"model": "x/y"}, "'engine' is required"),
    ({"engine": "tgi", "model": "x/y"}, r"server.engine' is 'tgi'"),
    ({"engine": "vllm", "model": "x/y", "tensor_parallel": 2}, r"unknown key\(s\) \['tensor_parallel'\]"),
    ("vllm", "must be a mapping"),
])
def test_bad_server_parameters_name_the_key(bad, message):
    with pytest.raises(ServerError, match=message):
        ServerSpec.from_dict(bad)


def test_a_server_that_dies_at_start_fails_with_its_log(tmp_path):
    spec = {"engine": "vllm", "model": "x/y", "startup_timeout": 60}
    server = ManagedServer(spec, tmp_path / "server.log", print_fn=lambda *a: None)
    import mumath.server as module

    original = module.server_command
    module.server_command = lambda spec, port: ["sh", "-c", "echo 'CUDA out of memory' >&2; exit 3"]
    try:
        with pytest.raises(ServerError, match=r"exited with 3(.|\n)*CUDA out of memory"):
            server.start()
    finally:
        module.server_command = original
    assert not server.running


def is_answering(base_url):
    try:
        urllib.request.urlopen(base_url + "/models", timeout=2)
        return True
    except OSError:
        return False


@pytest.fixture
def started_servers(monkeypatch):
    """Every ManagedServer started during the test (to check it is stopped afterwards)."""
    started = []
    original = ManagedServer.start

    def start(self):
        started.append(self)
        return original(self)

    monkeypatch.setattr(ManagedServer, "start", start)
    return started


TRANSFORMERS = {"engine": "transformers", "model": "embedded", "dtype": "float32", "startup_timeout": 300,
                "extra_args": ["--device", "cpu"], "env": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}}


@pytest.mark.server
@pytest.mark.slow
def test_evaluation_starts_and_stops_transformers_serve(tmp_path, data_dir, started_servers):
    pytest.importorskip("fastapi", reason="transformers serve needs the server extra")
    from mumath.evaluate import run_evaluation

    [metrics] = run_evaluation(str(tmp_path), server=TRANSFORMERS, data_dir=str(data_dir), benchmarks=["gsm8k"],
                               limit=2, modes=["cot"], max_new_tokens=8, exec_workers=1, progress=False)
    [server] = started_servers
    assert metrics["n"] == 2 and metrics["completion_tokens"] > 0 and metrics["request_errors"] == 0
    assert not server.running and not is_answering(server.base_url)
    settings = json.loads((tmp_path / "evaluate" / "gsm8k" / "cot" / "config.json").read_text())["settings"]
    assert settings["model"]["backend"] == "openai" and settings["model"]["base_url"] == server.base_url
    assert (tmp_path / "evaluate" / "server.log").stat().st_size > 0
    # A failing evaluation stops its server too.
    with pytest.raises(Exception, match="no-such-benchmark"):
        run_evaluation(str(tmp_path / "failing"), server=TRANSFORMERS, data_dir=str(data_dir),
                       benchmarks=["no-such-benchmark"], limit=1, progress=False)
    assert len(started_servers) == 2 and not started_servers[1].running
    assert not is_answering(started_servers[1].base_url)


@pytest.mark.server
def test_teacher_starts_and_stops_llama_cpp_server(tmp_path, started_servers):
    pytest.importorskip("llama_cpp.server", reason="the server extra builds llama-cpp-python")
    from mumath.backends import Sampling
    from mumath.teacher import make_teacher

    teacher = make_teacher(str(tmp_path), server={"engine": "llamacpp", "model": "embedded", "max_model_len": 2048,
                                                  "extra_args": ["--n_threads", "2"], "startup_timeout": 180})
    [server] = started_servers
    try:
        assert teacher.backend.base_url == server.base_url and teacher.backend.context_length == 2048
        [completion] = teacher.complete([teacher.format_prompt([{"role": "user", "content": "Say hello."}])],
                                        Sampling(max_new_tokens=8))
        assert completion.completion_tokens > 0 and not completion.finish.startswith("error")
    finally:
        teacher.close()
    assert not server.running and not is_answering(server.base_url)


@pytest.mark.server
@pytest.mark.slow
def test_a_params_file_starts_and_stops_the_server_by_itself(tmp_path, data_dir):
    """`python -m mumath run` on a params file whose evaluation names a server (transformers serve)."""
    pytest.importorskip("fastapi", reason="transformers serve needs the server extra")
    import yaml

    from mumath.runner import run

    params = tmp_path / "served.yaml"
    params.write_text(yaml.safe_dump({"run": "served", "steps": {"evaluate": {
        "server": TRANSFORMERS, "benchmarks": ["gsm8k"], "limit": 2, "modes": ["cot"], "max_new_tokens": 8,
        "exec_workers": 1, "data_dir": str(data_dir)}}}))
    run_dir = run(str(params), outputs=tmp_path / "outputs", log_output=False)
    metrics = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    assert metrics[0]["n"] == 2 and metrics[0]["completion_tokens"] > 0
    header = (run_dir / "evaluate" / "server.log").read_text().splitlines()[0]
    base_url = header.split()[2]  # "# mumath: <base_url> <- <command>", written by the step's kernel
    assert base_url.startswith("http://127.0.0.1:") and not is_answering(base_url)  # stopped with the step
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"]["evaluate"]["status"] == "completed"
