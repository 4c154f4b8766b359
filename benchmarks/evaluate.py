"""TIR evaluation throughput: the naive loop vs `mumath.tir.run_tool_loop` on the engine (`mumath/engine.py`).

    python benchmarks/evaluate.py [--problems 64] [--max-new-tokens 192] [--max-rounds 2] [--batch-size 64]

All arms run in this one process, on the same problems, greedy, one after the other:
- naive: `tir.reference_tool_loop` with batched `generate` (`TransformersBackend`, one batch of every
  unfinished problem per round, then that round's code blocks executed one after another), fp32;
- new: `tir.run_tool_loop` on `engine.Engine` (continuous batching, prefix reuse, executions on `--workers`
  threads while the model generates), fp32; its trajectories are compared with the naive ones text for text;
- new-bf16 (unless `--no-bf16`): the same loop with the model in bfloat16, reported apart (its greedy
  outputs differ from fp32's, so it is not part of the equal-output comparison).
Each arm is warmed up on a short request first (not timed) and runs on a fresh thread (see `in_worker_thread`). For the engine arms the time is split into
prefill and decode forwards, the rest of the engine thread's work, and idle (the engine waiting for
requests: executions and the loop's own work). Writes benchmarks/results/evaluate-<cpu|gpu>.json.
"""
import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.backends import Sampling, TransformersBackend  # noqa: E402
from mumath.data import load_benchmark  # noqa: E402
from mumath.engine import Engine  # noqa: E402
from mumath.executor import SandboxPool  # noqa: E402
from mumath.grading import extract_answer, is_equivalent  # noqa: E402
from mumath.models import load_model  # noqa: E402
from mumath.prompts import build_messages  # noqa: E402
from mumath.tir import OUTPUT_MARKER, reference_tool_loop, run_tool_loop  # noqa: E402


def in_worker_thread(function):
    """Run `function` on a fresh thread. The engine's forwards run on its own thread; the naive loop runs on
    one too, so both arms use torch's threads the same way (on a loaded CPU, `generate` called from the
    main thread measured up to 7x slower than the same call from a fresh thread)."""
    box = {}
    worker = threading.Thread(target=lambda: box.update(result=function()))
    worker.start()
    worker.join()
    return box["result"]


def timed(label, function):
    wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    result = in_worker_thread(function)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU (this process), load {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    return result, {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                    "load_average_start_end": [round(load, 1), round(os.getloadavg()[0], 1)]}


def summary(trajectories, records, timing):
    tokens = sum(t.completion_tokens for t in trajectories)
    correct = sum(is_equivalent(extract_answer(t.generation), r["answer"]) for t, r in zip(trajectories, records))
    return dict(timing, completion_tokens=tokens, tokens_per_s=round(tokens / timing["wall_s"], 1),
                correct=correct, accuracy=round(correct / len(records), 4),
                executions=sum(len(t.executions) for t in trajectories))


def engine_arm(label, model, tokenizer, prompts, records, pool, sampling, args):
    engine = Engine(model, tokenizer, max_batch_requests=args.batch_size, max_prefill_tokens=args.max_prefill_tokens,
                    kv_cache_tokens=args.kv_cache_tokens, progress=False)
    engine.complete(["Hello"], Sampling(max_new_tokens=4), [OUTPUT_MARKER])  # warm-up
    engine.stats = dict.fromkeys(engine.stats, 0)
    engine.store.entries.clear()
    engine.store.tokens = 0
    trajectories, timing = timed(label, lambda: run_tool_loop(engine, prompts, pool, sampling, args.max_rounds,
                                                              exec_workers=args.workers))
    engine.close()
    stats = {key: round(value, 1) for key, value in engine.stats.items()}
    stats["other_engine_work_s"] = round(stats["busy_seconds"] - stats["prefill_seconds"] - stats["decode_seconds"], 1)
    stats["idle_s"] = round(timing["wall_s"] - stats["busy_seconds"], 1)
    return trajectories, dict(summary(trajectories, records, timing), profile=stats)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="rows decoded together (engine)")
    parser.add_argument("--max-prefill-tokens", type=int, default=2048)
    parser.add_argument("--kv-cache-tokens", type=int, default=65536)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--few-shot", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--data-dir", default=os.environ.get("MUMATH_DATA_DIR"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, device=args.device, dtype="float32")
    device = str(model.device)
    records = load_benchmark("gsm8k", "test", data_dir=args.data_dir, limit=args.problems, seed=0)
    naive = TransformersBackend(model, tokenizer, batch_size=len(records), progress=False)
    prompts = [naive.format_prompt(build_messages(r["question"], "tir", args.few_shot)) for r in records]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    arms = {}
    with SandboxPool(workers=args.workers, timeout=10) as pool:
        in_worker_thread(lambda: naive.generate_batch(["Hello"], Sampling(max_new_tokens=4), [OUTPUT_MARKER]))
        old, timing = timed("naive loop (generate, fp32)", lambda: reference_tool_loop(
            naive, prompts, pool, sampling, args.max_rounds))
        arms["naive"] = summary(old, records, timing)
        new, arms["new"] = engine_arm("new loop (engine, fp32)", model, tokenizer, prompts, records, pool,
                                      sampling, args)
        if not args.no_bf16:
            model_bf16, _ = load_model(args.model, device=args.device, dtype="bfloat16")
            bf16, arms["new_bf16"] = engine_arm("new loop (engine, bf16)", model_bf16, tokenizer, prompts,
                                                records, pool, sampling, args)
            arms["new_bf16"]["trajectories_equal_to_fp32"] = sum(a.generation == b.generation
                                                                 for a, b in zip(bf16, new))
    name = "cuda:" + __import__("torch").cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    result = {
        "device": name, "cpus": os.cpu_count(), "model": args.model, "problems": len(records),
        "max_new_tokens": args.max_new_tokens, "max_rounds": args.max_rounds, "few_shot": args.few_shot,
        "batch_size": args.batch_size, "max_prefill_tokens": args.max_prefill_tokens,
        "kv_cache_tokens": args.kv_cache_tokens, "exec_workers": args.workers,
        "speedup_new_vs_naive": round(arms["naive"]["wall_s"] / arms["new"]["wall_s"], 2),
        "cpu_time_ratio": round(arms["naive"]["cpu_s"] / arms["new"]["cpu_s"], 2),
        "trajectories_identical": sum(a.generation == b.generation for a, b in zip(new, old)),
        "trajectories_differing": [index for index, (a, b) in enumerate(zip(new, old)) if a.generation != b.generation],
        "arms": arms,
        "torch_threads": __import__("torch").get_num_threads(),
        "note": "all arms in one process, one after the other, each on a fresh thread; wall times depend on what "
                "else shares the CPUs",
    }
    if "new_bf16" in arms:
        result["speedup_new_bf16_vs_naive"] = round(arms["naive"]["wall_s"] / arms["new_bf16"]["wall_s"], 2)
    out = Path(args.out or Path(__file__).parent / "results" / f"evaluate-{'gpu' if 'cuda' in name else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
