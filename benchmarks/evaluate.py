"""TIR evaluation throughput: the naive loop vs `mumath.tir.run_tool_loop` on continuous batching.

    python benchmarks/evaluate.py [--problems 64] [--max-new-tokens 192] [--batch-size 32] [--device cpu]

Both arms run in this one process, on the same problems and model, greedy:
- naive: `tir.reference_tool_loop` with `generate` (`TransformersBackend`): per round one `generate` batch
  over every unfinished problem, then that round's code blocks executed one after another;
- new: `tir.run_tool_loop` with `ContinuousBatchingBackend` (one persistent engine, prefix sharing, paged
  KV cache of `--kv-cache-tokens`), each trajectory event-driven, executions on `--workers` threads while
  the model generates. The engine's start-up (first request) is timed separately.
Their trajectories are compared text for text. Writes benchmarks/results/evaluate-<cpu|gpu>.json; on a GPU
pass `--problems 1319` for the full GSM8K test.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.backends import ContinuousBatchingBackend, Sampling, TransformersBackend  # noqa: E402
from mumath.data import load_benchmark  # noqa: E402
from mumath.executor import SandboxPool  # noqa: E402
from mumath.grading import extract_answer, is_equivalent  # noqa: E402
from mumath.models import load_model  # noqa: E402
from mumath.prompts import build_messages  # noqa: E402
from mumath.tir import reference_tool_loop, run_tool_loop  # noqa: E402


def timed(label, function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU (this process)", flush=True)
    return result, wall, cpu


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="requests per engine step (new arm)")
    parser.add_argument("--kv-cache-tokens", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--few-shot", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--data-dir", default=os.environ.get("MUMATH_DATA_DIR"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, device=args.device)
    device = str(model.device)
    records = load_benchmark("gsm8k", "test", data_dir=args.data_dir, limit=args.problems, seed=0)
    naive = TransformersBackend(model, tokenizer, batch_size=len(records), progress=False)
    engine = ContinuousBatchingBackend(model, tokenizer, max_batch_requests=args.batch_size,
                                       kv_cache_tokens=args.kv_cache_tokens, progress=False)
    prompts = [naive.format_prompt(build_messages(r["question"], "tir", args.few_shot)) for r in records]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    with SandboxPool(workers=args.workers, timeout=10) as pool:
        _, startup_s, _ = timed("engine start-up", lambda: engine.complete(["Hello"], Sampling(max_new_tokens=1)))
        new, new_s, new_cpu = timed("new loop", lambda: run_tool_loop(
            engine, prompts, pool, sampling, args.max_rounds, exec_workers=args.workers))
        old, naive_s, naive_cpu = timed("naive loop", lambda: reference_tool_loop(
            naive, prompts, pool, sampling, args.max_rounds))
    engine.close()
    same = sum(a.generation == b.generation for a, b in zip(new, old))
    answers = [extract_answer(t.generation) for t in new]
    correct = sum(is_equivalent(a, r["answer"]) for a, r in zip(answers, records))
    tokens = sum(t.completion_tokens for t in new)
    name = "cuda:" + __import__("torch").cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    result = {
        "device": name, "cpus": os.cpu_count(), "model": args.model, "problems": len(records),
        "max_new_tokens": args.max_new_tokens, "max_rounds": args.max_rounds, "few_shot": args.few_shot,
        "batch_size": args.batch_size, "kv_cache_tokens": args.kv_cache_tokens, "exec_workers": args.workers,
        "naive_s": round(naive_s, 1), "naive_cpu_s": round(naive_cpu, 1),
        "new_s": round(new_s, 1), "new_cpu_s": round(new_cpu, 1), "engine_startup_s": round(startup_s, 1),
        "speedup": round(naive_s / new_s, 2), "cpu_time_ratio": round(naive_cpu / new_cpu, 2),
        "naive_tokens_per_s": round(sum(t.completion_tokens for t in old) / naive_s, 1),
        "new_tokens_per_s": round(tokens / new_s, 1),
        "trajectories_identical": same, "new_correct": correct, "new_completion_tokens": tokens,
        "executions": sum(len(t.executions) for t in new), "false_stops": engine.false_stops,
        "note": "both arms in one process, one after the other; wall times depend on what else shares the CPUs",
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"evaluate-{'gpu' if 'cuda' in name else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
