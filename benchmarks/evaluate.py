"""TIR evaluation throughput: `mumath.tir.run_tool_loop` vs a naive loop, same problems, same model.

    python benchmarks/evaluate.py [--problems 64] [--max-new-tokens 256] [--batch-size 32] [--device cpu]

The naive loop is what one writes first: per round, one `generate` over every unfinished problem in a
single unsorted batch, then the round's code blocks executed one after another. Ours: length-sorted
batches of `--batch-size`, and each round's executions in parallel in the sandbox pool. Both are greedy,
so their answers should agree (padding can flip a rare near-tie). Writes
benchmarks/results/evaluate-<device>.json; on a GPU pass `--problems 1319` for the full GSM8K test.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.backends import Sampling, TransformersBackend  # noqa: E402
from mumath.data import load_benchmark  # noqa: E402
from mumath.executor import SandboxPool  # noqa: E402
from mumath.grading import extract_answer, is_equivalent  # noqa: E402
from mumath.models import load_model  # noqa: E402
from mumath.prompts import build_messages  # noqa: E402
from mumath.tir import OUTPUT_MARKER, Trajectory, format_output, last_code_block, run_tool_loop  # noqa: E402


def naive_tool_loop(backend, prompts, pool, sampling, max_rounds):
    trajectories = [Trajectory(prompt=p) for p in prompts]
    active = list(range(len(prompts)))
    for round_index in range(max_rounds + 1):
        if not active:
            break
        completions = backend.generate_batch([trajectories[i].prompt + trajectories[i].generation for i in active],
                                             sampling, [OUTPUT_MARKER])
        still = []
        for index, completion in zip(active, completions):
            trajectory = trajectories[index]
            trajectory.generation += completion.text
            trajectory.completion_tokens += completion.completion_tokens
            code = last_code_block(trajectory.generation) if completion.finish == "stop" else None
            if code is not None and round_index < max_rounds:
                trajectory.generation += format_output(pool.execute(code).as_output())
                still.append(index)
        active = still
    return trajectories


def timed(label, function):
    started = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f} s", flush=True)
    return result, seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--few-shot", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--data-dir", default=os.environ.get("MUMATH_DATA_DIR"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, device=args.device)
    device = str(model.device)
    records = load_benchmark("gsm8k", "test", data_dir=args.data_dir, limit=args.problems, seed=0)
    backend = TransformersBackend(model, tokenizer, batch_size=args.batch_size, progress=False)
    prompts = [backend.format_prompt(build_messages(r["question"], "tir", args.few_shot)) for r in records]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    with SandboxPool(workers=args.workers, timeout=10) as pool:
        ours, ours_s = timed("mumath loop", lambda: run_tool_loop(backend, prompts, pool, sampling, args.max_rounds))
        naive, naive_s = timed("naive loop", lambda: naive_tool_loop(backend, prompts, pool, sampling,
                                                                     args.max_rounds))
    answers = [(extract_answer(a.generation), extract_answer(b.generation)) for a, b in zip(ours, naive)]
    agree = sum(1 for x, y in answers if x == y)
    correct = sum(is_equivalent(x, r["answer"]) for (x, _), r in zip(answers, records))
    name = "cuda:" + __import__("torch").cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    result = {
        "device": name, "cpus": os.cpu_count(), "model": args.model, "problems": len(records),
        "max_new_tokens": args.max_new_tokens, "max_rounds": args.max_rounds, "batch_size": args.batch_size,
        "few_shot": args.few_shot,
        "ours_s": round(ours_s, 1), "ours_problems_per_s": round(len(records) / ours_s, 3),
        "naive_s": round(naive_s, 1), "naive_problems_per_s": round(len(records) / naive_s, 3),
        "speedup": round(naive_s / ours_s, 2), "answers_agree": agree, "ours_correct": correct,
        "ours_completion_tokens": sum(t.completion_tokens for t in ours),
        "executions": sum(len(t.executions) for t in ours),
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"evaluate-{'gpu' if 'cuda' in name else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
