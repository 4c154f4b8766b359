"""SFT throughput: our trainer (TRL SFTTrainer, `mumath.sft.build_trainer`) vs a plain transformers `Trainer`,
and fp32 vs the precision `auto` picks (bf16 on CPUs with native bf16).

    python benchmarks/train.py [--examples 48] [--finetune full lora] [--device cpu] [--batch-size 8]
    python benchmarks/train.py --finetune full --arms packed --precisions fp32 bf16 bf16-weights  # precision

Same data (GSM8K training rationales as CoT solutions in the evaluation format, loss-masked by
`mumath.sft_examples`), same model (the embedded one unless `--model`), same device, one epoch each, in one process
so that machine load hits every arm alike. Arms per fine-tuning mode:
- `plain`: `transformers.Trainer`, random order, `DataCollatorForSeq2Seq` padding to the batch maximum;
- `padded`: ours with batches of similar lengths (`train_sampling_strategy=group_by_length`);
- `packed`: ours with best-fit-decreasing packing, padding-free (`position_ids`), one packed row of
  `--max-length` tokens per step (flash attention on a GPU when installed; sdpa otherwise).
Each arm runs once per `--precisions` entry (default: fp32 and `auto`'s pick): bf16 = autocast over fp32
weights, bf16-weights = weights, gradients and AdamW state in bf16. Per precision the file holds the loss
curve (one loss per optimizer step, same data in the same order) and its largest distance from fp32's.
Tokens/s counts real (non-pad) tokens over the time spent in training steps; torch uses every core the
process may use (the file says how many). Writes benchmarks/results/train-<device>.json, with MFU on a GPU.
"""
import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.data import load_benchmark  # noqa: E402
from mumath.models import load_tokenizer, resolve_model_path  # noqa: E402
from mumath.sft import (CountingCollator, TrainConfig, build_trainer, device_kind, lora_config,  # noqa: E402
                        make_callbacks, mfu, parameter_counts, peak_memory_gb, resolve_attention,
                        resolve_precision, torch_dtype, use_every_core, uses_bf16)
from mumath.sft_examples import build_examples  # noqa: E402


def gsm8k_cot_rows(count, seed, data_dir=None):
    """GSM8K training rationales, `<<...>>` annotations removed, ending in \\boxed{answer}."""
    import re

    records = load_benchmark("gsm8k", "train", data_dir=data_dir, limit=count, seed=seed)
    rows = []
    for record in records:
        rationale = record["meta"]["answer"]  # the full GSM8K answer field: rationale, then "#### answer"
        body = re.sub(r"<<[^>]*>>", "", rationale.split("####")[0]).strip()
        rows.append({"id": record["id"], "question": record["question"],
                     "messages": [{"role": "assistant", "content": f"{body}\nThe answer is \\boxed{{{record['answer']}}}."}]})
    return rows


def plain_trainer(config, examples, tokenizer, init_path, out, device):
    """What one writes first: transformers' Trainer, padding every batch to its longest sequence."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    precision = resolve_precision(config.precision, device)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=config.per_device_batch_size,
                             num_train_epochs=config.epochs, learning_rate=config.learning_rate,
                             bf16=uses_bf16(precision), fp16=precision == "fp16", use_cpu=device == "cpu",
                             save_strategy="no", logging_steps=1, report_to=[], seed=config.seed)
    weights = "bf16" if precision == "bf16-weights" else "fp32"
    model = AutoModelForCausalLM.from_pretrained(init_path, dtype=torch_dtype(weights),
                                                 attn_implementation=resolve_attention("auto", device))
    if config.finetune == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config))
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    counter = CountingCollator(collator, tokenizer.pad_token_id)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(examples), data_collator=counter)
    for callback in make_callbacks(Path(out) / "log.jsonl", counter):
        trainer.add_callback(callback)
    return trainer, counter


def run_arm(name, make, device):
    trainer, counter = make()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    params = parameter_counts(trainer.model)[1]  # whole model: 4-bit weights by their shape
    tokens_per_second = counter.tokens / counter.step_seconds
    losses = [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]
    result = {"tokens_per_second": round(tokens_per_second, 1), "tokens": counter.tokens, "losses": losses,
              "positions": counter.positions, "padding_share": round(1 - counter.tokens / counter.positions, 3),
              "steps": trainer.state.global_step, "step_seconds": round(counter.step_seconds, 1),
              "seconds": round(seconds, 1), "final_loss": trainer.state.log_history[-2].get("loss"),
              "peak_memory_gb": peak_memory_gb(device), "mfu": mfu(params, tokens_per_second, device)}
    print(f"{name}: {json.dumps(result)}", flush=True)
    del trainer
    return result


def run_precision_arm(name, arm, finetune, precision, learning_rate, examples, tokenizer, init_path, device, args):
    packed = arm == "packed"
    batch = 1 if packed else args.batch_size
    config = TrainConfig(output_dir="unused", data="unused", finetune=finetune, epochs=1.0,
                         learning_rate=learning_rate, global_batch_size=batch, per_device_batch_size=batch,
                         max_length=args.max_length, packing=packed, warmup_ratio=0.0, seed=args.seed,
                         save_steps=10**6, precision=precision)
    with tempfile.TemporaryDirectory() as out:
        if arm == "plain":
            make = lambda: plain_trainer(config, examples, tokenizer, init_path, out, device)  # noqa: E731
        else:
            make = lambda: build_trainer(config, examples, tokenizer, init_path, out, device)[:2]  # noqa: E731
        return run_arm(name, make, device)


def compare_precisions(results, precisions, tolerance):
    """Per arm and lower precision: tokens/s over fp32's, and how far its loss curve strays from fp32's."""
    comparison = {}
    for name, result in results.items():
        for precision in precisions:
            if precision == "fp32" or not name.endswith(f"-{precision}"):
                continue
            base = results.get(name[:-len(precision) - 1])
            if base is None:
                continue
            gaps = [abs(a - b) for a, b in zip(result["losses"], base["losses"])]
            comparison[name] = {
                "speedup": round(result["tokens_per_second"] / base["tokens_per_second"], 2),
                "max_loss_gap": round(max(gaps), 4) if gaps else None,
                "mean_loss_gap": round(sum(gaps) / len(gaps), 4) if gaps else None,
                "final_loss_gap": round(result["losses"][-1] - base["losses"][-1], 4) if gaps else None,
                "within_tolerance": bool(gaps) and max(gaps) <= tolerance}
    return comparison


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--finetune", nargs="+", default=["full", "lora"])
    parser.add_argument("--arms", nargs="+", default=["plain", "padded", "packed"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"],
                        help="fp32, auto (this machine's pick), bf16 (autocast), bf16-weights, fp16")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: 2e-5 full, 2e-4 LoRA")
    parser.add_argument("--loss-tolerance", type=float, default=0.05,
                        help="largest accepted |loss - fp32 loss| at any step, in nats (see docs/cpu-speed.md)")
    parser.add_argument("--batch-size", type=int, default=8, help="per-device batch of the padded arms")
    parser.add_argument("--max-length", type=int, default=2048, help="packed row length (and length limit)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = args.device or device_kind()
    threads = use_every_core(device)
    precisions = list(dict.fromkeys(resolve_precision(p, device) for p in args.precisions))
    init_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(init_path)
    tokenizer.padding_side = "right"
    examples, stats = build_examples(gsm8k_cot_rows(args.examples, args.seed), tokenizer, "cot", args.max_length)
    random.Random(args.seed).shuffle(examples)
    print(f"{len(examples)} examples, {stats.tokens} tokens, longest {stats.longest}", flush=True)
    results = {}
    for finetune in args.finetune:
        learning_rate = args.learning_rate or (2e-5 if finetune == "full" else 2e-4)
        for arm in args.arms:
            for precision in precisions:
                name = f"{finetune}-{arm}" + ("" if precision == "fp32" else f"-{precision}")
                results[name] = run_precision_arm(name, arm, finetune, precision, learning_rate, examples, tokenizer,
                                                  init_path, device, args)
    ratios = {}
    for finetune in args.finetune:
        plain = results.get(f"{finetune}-plain")
        for arm in ("padded", "packed"):
            if plain and f"{finetune}-{arm}" in results:
                ratios[f"{finetune}: {arm} / plain"] = round(
                    results[f"{finetune}-{arm}"]["tokens_per_second"] / plain["tokens_per_second"], 2)
    precision_ratios = compare_precisions(results, precisions, args.loss_tolerance)
    import os

    import torch

    report = {"device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
              "cpus": os.cpu_count(), "torch_threads": threads, "model": args.model,
              "auto_precision": resolve_precision("auto", device), "learning_rate": args.learning_rate,
              "load_average_end": os.getloadavg()[0],
              "examples": len(examples), "data_tokens": stats.tokens, "longest": stats.longest,
              "batch_size": args.batch_size, "max_length": args.max_length,
              "attention": resolve_attention("auto", device), "arms": results, "ratios": ratios,
              "precision_vs_fp32": precision_ratios, "loss_tolerance": args.loss_tolerance,
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"train-{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"ratios": ratios, "precision_vs_fp32": precision_ratios}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
