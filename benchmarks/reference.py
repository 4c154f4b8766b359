"""Reference solutions over GSM8K train: yield and time of code-nested conversion, one block per step vs one
block per solution, and of FOBAR solutions solved with sympy.

    python benchmarks/reference.py [--limit N] [--workers 2] [--parts step,solution,fobar]

Writes benchmarks/results/reference.json. Both block modes run in the same process on the same pool, one
after the other, so CPU contention from other jobs affects both. FOBAR questions are built the way step 1
builds them without a teacher (`augment.mask_number`, seeded per seed id), one per seed with a number.
(`python -m mumath run params/reference-data.yaml` is the whole step; its stats land in
outputs/reference-data/synthesize/stats.json.)
"""
import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.augment import mask_number, new_record  # noqa: E402
from mumath.data import load_benchmark  # noqa: E402
from mumath.executor import SandboxPool  # noqa: E402
from mumath.reference import reference_solutions  # noqa: E402


def fobar_questions(seeds, seed=0):
    questions = []
    for record in seeds:
        masked = mask_number(record["question"], record["answer"], random.Random(f"{seed}:{record['id']}"))
        if masked is not None:
            questions.append(new_record(record, "fobar", 0, masked[0], masked[1], "deterministic", "",
                                        {"masked_value": masked[1]}))
    return questions


def measure(name, questions, seeds, pool, blocks="step"):
    started = time.perf_counter()
    rows, _, counts = reference_solutions(questions, seeds, pool, "tir", blocks)
    seconds = time.perf_counter() - started
    executions = sum(row["executions"] for row in rows)
    print(f"{name}: {counts['converted']} / {counts['questions']} converted, dropped {counts['dropped']}, "
          f"{executions} executions, {seconds:.0f} s")
    return dict(counts, executions=executions, seconds=round(seconds, 1),
                share_converted=round(counts["converted"] / counts["questions"], 4),
                all_correct=all(row["correct"] for row in rows))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="GSM8K train problems (default: all 7473)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reference.json"))
    parser.add_argument("--parts", default="step,solution,fobar", help="which measurements to (re)run")
    args = parser.parse_args()
    parts = args.parts.split(",")
    seeds = load_benchmark("gsm8k", "train", args.data_dir, limit=args.limit)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() and len(parts) < 3 else {}  # keep the other parts
    results.update({"problems": len(seeds), "workers": args.workers, "cpus": os.cpu_count(),
                    "machine": platform.platform(), "note": "measured while other jobs shared the CPUs"})
    with SandboxPool(workers=args.workers) as pool:
        if "step" in parts:
            results["tir_block_per_step"] = measure("one block per step", seeds, {}, pool, "step")
        if "solution" in parts:
            results["tir_block_per_solution"] = measure("one block per solution", seeds, {}, pool, "solution")
        if "fobar" in parts:
            fobar = fobar_questions(seeds)
            results["fobar"] = measure("FOBAR (sympy)", fobar, {record["id"]: record for record in seeds}, pool)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
