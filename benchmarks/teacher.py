"""Teacher requests per second against a local OpenAI-compatible server, concurrency 1 vs 16, and a re-run.

    python benchmarks/teacher.py [--requests 32] [--max-new-tokens 32]

Starts llama-cpp-python's server on loopback with the embedded GGUF (as the tests do), sends the same
rephrasing requests through `Teacher` at concurrency 1 and 16 (fresh caches), then re-runs the second
batch on its warm cache (zero calls). Writes benchmarks/results/teacher.json.
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
from mumath.models import embedded_gguf_path, load_tokenizer  # noqa: E402
from mumath.teacher import Teacher  # noqa: E402
from tests.conftest import LlamaServer, free_port  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher.json"))
    args = parser.parse_args()
    tokenizer = load_tokenizer("embedded")
    messages = [[{"role": "user", "content": f"Rephrase: Tom has {i} apples and buys {i + 3} more. How many now?"}]
                for i in range(args.requests)]
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.7)
    server = LlamaServer(embedded_gguf_path(), free_port()).start()
    result = {"requests": args.requests, "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count(),
              "server": "llama-cpp-python 0.3.36 (one request at a time), embedded GGUF, 2 threads"}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for concurrency in (1, 16):
                backend = OpenAIBackend(server.base_url, "embedded", max_concurrency=concurrency, progress=False)
                teacher = Teacher(backend, Path(folder) / f"cache-{concurrency}.jsonl")
                started = time.perf_counter()
                teacher.complete(prompts, sampling)
                seconds = time.perf_counter() - started
                result[f"concurrency_{concurrency}_s"] = round(seconds, 2)
                result[f"concurrency_{concurrency}_requests_per_s"] = round(args.requests / seconds, 2)
                result[f"concurrency_{concurrency}_completion_tokens"] = teacher.usage.completion_tokens
            rerun = Teacher(OpenAIBackend(server.base_url, "embedded", max_concurrency=16, progress=False),
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
