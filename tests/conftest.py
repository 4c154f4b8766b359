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


@pytest.fixture(scope="session")
def llama_style_model(tmp_path_factory):
    """A Llama-style checkpoint built here (no download): a BPE tokenizer whose post-processor puts BOS
    ``<s>`` in front of every text (as Llama-2's tokenizer.json does), newlines as their own tokens,
    no chat template (like Llama-2 / CodeLlama base, MuMath-Code-L/CL, ToRA), and a 1-layer Llama."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mumath.prompts import read_fewshot

    corpus = [row["question"] + "\n" + row["solution"] for row in read_fewshot("tir") + read_fewshot("cot")]
    corpus += ["<|user|>\n<|assistant|>\n```python\nprint(2 * 3)\n```\n```output\n6\n```\nThe answer is \\boxed{6}."]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                       pre_tokenizers.Metaspace()])
    tokenizer.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                                              initial_alphabet=alphabet))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    folder = tmp_path_factory.mktemp("llama-style")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>")
    wrapped.save_pretrained(folder)
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_dir):
    """The embedded model's architecture and tokenizer, shrunk to 2 layers of width 64 (trains in seconds);
    training tests share it (one process, CPU ranks)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny")
    config = AutoConfig.from_pretrained(embedded_dir)
    config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_dir).save_pretrained(folder)
    return folder
