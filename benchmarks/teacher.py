"""Teacher requests per second against a local OpenAI-compatible server, concurrency 1 vs 16, and a re-run.

    python benchmarks/teacher.py [--requests 32] [--max-new-tokens 32] [--server transformers|llama]

Starts a server on loopback as the tests do: by default `transformers serve --continuous-batching` on the
embedded safetensors folder (it batches concurrent requests), or llama-cpp-python's server on the embedded
GGUF (one request at a time). Sends the same rephrasing requests through `Teacher` at concurrency 1 and 16
(fresh caches), then re-runs the second batch on its warm cache (zero calls). Writes
benchmarks/results/teacher.json (teacher-llama.json for the llama server).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mumath.backends import OpenAIBackend, Sampling  # noqa: E402
from mumath.models import embedded_gguf_path, embedded_model_dir, load_tokenizer  # noqa: E402
from mumath.teacher import Teacher  # noqa: E402
from tests.conftest import LlamaServer, TransformersServer, free_port  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--server", choices=["transformers", "llama"], default="transformers")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.out = args.out or str(ROOT / "benchmarks" / "results" /
                               ("teacher.json" if args.server == "transformers" else "teacher-llama.json"))
    tokenizer = load_tokenizer("embedded")
    messages = [[{"role": "user", "content": f"Rephrase: Tom has {i} apples and buys {i + 3} more. How many now?"}]
                for i in range(args.requests)]
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.7)
    if args.server == "llama":
        server, model = LlamaServer(embedded_gguf_path(), free_port()).start(), "embedded"
        described = "llama-cpp-python 0.3.36 (one request at a time), embedded GGUF, 2 threads"
    else:
        server = TransformersServer(embedded_model_dir(), free_port()).start()
        model = server.model_dir  # the server accepts only the name it is pinned to
        described = (f"transformers 5.23.0 serve --continuous-batching, embedded safetensors fp32 on CPU, "
                     f"{' '.join(server.options)}")
    result = {"requests": args.requests, "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count(),
              "server": described,
              "note": "measured while other jobs shared the CPUs; the warm-up request is not timed"}
    try:
        # The server builds its engine on the first request: not part of either measurement.
        OpenAIBackend(server.base_url, model, progress=False).complete(["Hello"], Sampling(1, temperature=0.7))
        with tempfile.TemporaryDirectory() as folder:
            for concurrency in (1, 16):
                backend = OpenAIBackend(server.base_url, model, max_concurrency=concurrency, progress=False)
                teacher = Teacher(backend, Path(folder) / f"cache-{concurrency}.jsonl")
                started = time.perf_counter()
                teacher.complete(prompts, sampling)
                seconds = time.perf_counter() - started
                result[f"concurrency_{concurrency}_s"] = round(seconds, 2)
                result[f"concurrency_{concurrency}_requests_per_s"] = round(args.requests / seconds, 2)
                result[f"concurrency_{concurrency}_completion_tokens"] = teacher.usage.completion_tokens
            rerun = Teacher(OpenAIBackend(server.base_url, model, max_concurrency=16, progress=False),
                            Path(folder) / "cache-16.jsonl")
            started = time.perf_counter()
            rerun.complete(prompts, sampling)
            result["rerun_s"] = round(time.perf_counter() - started, 3)
            result["rerun_requests"] = rerun.usage.requests
            result["rerun_cache_hits"] = rerun.usage.cache_hits
    finally:
        server.stop()
    result["ratio_16_over_1"] = round(result["concurrency_16_requests_per_s"] / result["concurrency_1_requests_per_s"], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
