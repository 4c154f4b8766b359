"""GSM8K accuracy of the embedded model before training, after stage 1 and after stage 2 (CoT and TIR).

    python benchmarks/two_stage_accuracy.py --cot <run>/synthesize/cot.jsonl --tir <run>/synthesize/tir.jsonl \
        [--train-rows 64] [--problems 40] [--finetune full] [--epochs 2] [--out outputs/two-stage-accuracy]

Training rows: a seeded sample of the correct GSM8K rows (`source` gsm8k/..., `correct` true) of each file,
e.g. the reference-derived solutions of `params/reference-data.yaml` (GSM8K training rationales turned into
CoT and code-nested solutions, every output from the sandbox). Stage 1 trains the embedded model on the CoT
rows, stage 2 trains stage 1's model on the code-nested rows, both through `mumath.sft.run_stage` (the
notebooks' path). Each model is evaluated zero-shot, greedy, in the training format on the same seeded sample
of GSM8K test (`mumath.evaluate.run_evaluation`). Writes benchmarks/results/two-stage-accuracy.json.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.params import resolve  # noqa: E402
from mumath.records import read_jsonl, write_jsonl  # noqa: E402
from mumath.sft import run_stage  # noqa: E402
from mumath.steps import run_evaluate  # noqa: E402


def sample_rows(path, count, seed):
    rows = [row for row in read_jsonl(path)
            if str(row.get("source", "")).startswith("gsm8k") and row.get("correct") is True]
    if len(rows) < count:
        raise SystemExit(f"{path}: only {len(rows)} correct GSM8K rows, asked for {count}")
    return random.Random(seed).sample(rows, count)


def evaluate(run_dir, model, args):
    started = time.perf_counter()
    results = run_evaluate(resolve("evaluate", overrides={
        "run_dir": str(run_dir), "model": model, "seed": args.seed, "sandbox": {"workers": 2},
        "evaluation": {"benchmarks": ["gsm8k"], "limit": args.problems, "modes": ["cot", "tir"], "few_shot": 0,
                       "max_rounds": 3, "batch_size": args.batch_size,
                       "generation": {"max_new_tokens": args.max_new_tokens}}}, runner_fields_ok=True))
    return {r["mode"]: {"accuracy": round(r["accuracy"], 4), "correct": r["correct"], "n": r["n"],
                        "ci95": [round(x, 4) for x in r["ci95"]], "executions": r["executions"],
                        "execution_errors": r["execution_errors"], "no_answer": r["no_answer"],
                        "completion_tokens": r["completion_tokens"]} for r in results} | {
        "seconds": round(time.perf_counter() - started, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cot", required=True)
    parser.add_argument("--tir", required=True)
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--finetune", default="full")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/two-stage-accuracy")
    args = parser.parse_args()
    out = Path(args.out)
    data = {stage: out / "data" / f"{stage}.jsonl" for stage in ("stage1", "stage2")}
    write_jsonl(data["stage1"], sample_rows(args.cot, args.train_rows, args.seed))
    write_jsonl(data["stage2"], sample_rows(args.tir, args.train_rows, args.seed))
    training = dict(finetune=args.finetune, epochs=args.epochs, learning_rate=args.learning_rate,
                    global_batch_size=8, per_device_batch_size=8, max_length=1024, warmup_ratio=0.03,
                    save_steps=1000, seed=args.seed)
    report = {"args": vars(args), "training": training,
              "data": {"stage1": f"{args.train_rows} correct GSM8K rows sampled (seed {args.seed}) from {args.cot}",
                       "stage2": f"{args.train_rows} correct GSM8K rows sampled (seed {args.seed}) from {args.tir}"}}
    report["before"] = evaluate(out / "eval-before", "embedded", args)
    print(json.dumps(report["before"]), flush=True)
    for stage, mode in (("stage1", "cot"), ("stage2", "tir")):
        started = time.perf_counter()
        stats = run_stage(str(out), stage, data=str(data[stage]), mode=mode, **training)
        report[f"{stage}_training"] = {key: stats[key] for key in (
            "steps", "epochs", "train_loss", "final_loss", "tokens_trained", "padding_share", "tokens_per_second",
            "step_seconds", "seconds", "packing", "precision")} | {
            "examples": stats["examples"]["examples"], "target_tokens": stats["examples"]["target_tokens"],
            "masked_output_tokens": stats["examples"]["masked_output_tokens"],
            "wall_seconds": round(time.perf_counter() - started, 1)}
        report[f"after_{stage}"] = evaluate(out / f"eval-after-{stage}", str(out / stage / "final"), args)
        print(stage, json.dumps(report[f"{stage}_training"]), json.dumps(report[f"after_{stage}"]), flush=True)
    report["when"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    target = Path(__file__).resolve().parent / "results" / "two-stage-accuracy.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
