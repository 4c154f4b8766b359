"""Everything a GPU machine should measure, in one command, from local files only (no network):

    python benchmarks/gpu.py [--model embedded] [--out benchmarks/results/gpu-<device>.json]
    python benchmarks/gpu.py --tiny            # the same parts at toy sizes on a toy model (a CPU check that
                                               # the script works; its numbers measure nothing)

Parts, each in its own process (one part's failure or memory is not the next one's), each reusing the
benchmark that owns it:
- `sft`: `benchmarks/train.py`, full fine-tuning: plain `transformers.Trainer` vs our padded vs our packed
  trainer: tokens/s, MFU, and the packed / plain ratio (target >= 3x);
- `evaluate`: `benchmarks/evaluate.py`, GSM8K TIR: batched `generate` (the naive loop) vs the engine;
- `qlora`: `benchmarks/train.py --finetune qlora --arms packed`: one QLoRA run, tokens/s, MFU, peak memory;
- `quickstart`: `python -m mumath run params/quickstart.yaml` into a scratch folder: wall time per step and
  the evaluation summary (on a GPU the steps pick CUDA themselves).
Model and data come from the package (the embedded model, the shipped benchmark copies) or `--model <folder>`;
nothing is downloaded. Writes one JSON with the machine, every part's result (or its error), and the
command that produced it. `--only` / `--skip` choose parts.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
PARTS = ("sft", "evaluate", "qlora", "quickstart")
# Sizes: the real measurement, and --tiny (seconds to minutes on 2 CPU cores; shows the script works).
SIZES = {
    "full": {"sft": ["--examples", "256", "--max-length", "2048", "--batch-size", "8"],
             "evaluate": ["--problems", "256", "--max-new-tokens", "512", "--max-rounds", "3", "--batch-size", "256"],
             "qlora": ["--examples", "256", "--max-length", "2048"]},
    "tiny": {"sft": ["--examples", "4", "--max-length", "256", "--batch-size", "2"],
             "evaluate": ["--problems", "2", "--max-new-tokens", "32", "--max-rounds", "1", "--batch-size", "2",
                          "--few-shot", "0", "--no-bf16"],
             "qlora": ["--examples", "2", "--max-length", "256"]},
}
# --tiny quickstart: one seed per benchmark, one training step per stage, one GSM8K problem evaluated.
TINY_QUICKSTART = {"seeds_per_benchmark": 1, "max_steps": 1, "global_batch_size": 1,
                   "evaluation": {"benchmarks": ["gsm8k"], "limit": 1, "max_new_tokens": 64, "max_rounds": 1}}


def toy_model(folder):
    """The embedded model's architecture and tokenizer shrunk to 2 layers of width 64, random weights (--tiny)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mumath.models import embedded_model_dir

    config = AutoConfig.from_pretrained(embedded_model_dir())
    config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(folder)
    return str(folder)


def machine():
    import platform

    import torch

    cuda = torch.cuda.is_available()
    return {"device": "cuda" if cuda else "cpu", "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpus": torch.cuda.device_count(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__, "load_average_start": round(os.getloadavg()[0], 1)}


def run_part(name, command, log_dir):
    """Run one part; its stdout and stderr go to <log_dir>/<name>.log; returns (seconds, error or None)."""
    log = Path(log_dir) / f"{name}.log"
    print(f"[gpu.py] {name}: {' '.join(command)}  (log: {log})", flush=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        completed = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                       filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))))
    seconds = round(time.perf_counter() - started, 1)
    error = None if completed.returncode == 0 else \
        f"exit {completed.returncode}: " + log.read_text()[-2000:]
    print(f"[gpu.py] {name}: {'ok' if error is None else 'FAILED'} in {seconds} s", flush=True)
    return seconds, error


def sft_part(args, size, scratch):
    out = scratch / "sft.json"
    command = [sys.executable, str(HERE / "train.py"), "--finetune", "full", "--arms", "plain", "padded", "packed",
               "--model", args.model, "--out", str(out), *SIZES[size]["sft"]]
    seconds, error = run_part("sft", command, scratch)
    if error:
        return {"command": command, "seconds": seconds, "error": error}
    report = json.loads(out.read_text())
    arms = {arm: {key: report["arms"][f"full-{arm}"][key] for key in
                  ("tokens_per_second", "mfu", "padding_share", "peak_memory_gb", "steps")}
            for arm in ("plain", "padded", "packed")}
    ratio = report["ratios"].get("full: packed / plain")
    return {"command": command, "seconds": seconds, "arms": arms, "packed_over_plain": ratio,
            "target_packed_over_plain": 3.0, "target_met": ratio is not None and ratio >= 3.0,
            "attention": report["attention"], "examples": report["examples"], "max_length": report["max_length"]}


def evaluate_part(args, size, scratch):
    out = scratch / "evaluate.json"
    command = [sys.executable, str(HERE / "evaluate.py"), "--model", args.model, "--out", str(out),
               *SIZES[size]["evaluate"]]
    seconds, error = run_part("evaluate", command, scratch)
    if error:
        return {"command": command, "seconds": seconds, "error": error}
    report = json.loads(out.read_text())
    keep = ("wall_s", "completion_tokens", "tokens_per_s", "accuracy")
    return {"command": command, "seconds": seconds, "problems": report["problems"],
            "naive_generate": {key: report["arms"]["naive"][key] for key in keep},
            "engine": {key: report["arms"]["new"][key] for key in keep},
            "engine_over_generate": report["speedup_new_vs_naive"],
            "trajectories_identical": report["trajectories_identical"]}


def qlora_part(args, size, scratch):
    out = scratch / "qlora.json"
    command = [sys.executable, str(HERE / "train.py"), "--finetune", "qlora", "--arms", "packed",
               "--model", args.model, "--out", str(out), *SIZES[size]["qlora"]]
    seconds, error = run_part("qlora", command, scratch)
    if error:
        return {"command": command, "seconds": seconds, "error": error}
    report = json.loads(out.read_text())
    return {"command": command, "seconds": seconds, **report["arms"]["qlora-packed"]}


def quickstart_params(size, scratch, model):
    """params/quickstart.yaml as is, or (--tiny) shrunk to one seed, one step and one problem per evaluation."""
    import yaml

    source = REPO / "params" / "quickstart.yaml"
    if size != "tiny":
        return source
    plan = yaml.safe_load(source.read_text())
    plan.pop("anchors", None)  # already merged into the steps that use them
    evaluation = TINY_QUICKSTART["evaluation"]
    plan.update({key: value for key, value in TINY_QUICKSTART.items() if key != "evaluation"})
    plan.update(teacher_model=model, model=model)  # the toy model teaches, trains and is evaluated
    for step, params in plan["steps"].items():
        if step.split(".")[0] == "evaluate":
            params.update(evaluation)
            if params.get("model") == "embedded":
                params["model"] = model
    plan["steps"]["stage1"] = dict(plan["steps"].get("stage1") or {}, init_model=model)
    path = scratch / "quickstart-tiny.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def quickstart_part(args, size, scratch):
    params = quickstart_params(size, scratch, args.model)
    outputs = scratch / "outputs"
    command = [sys.executable, "-m", "mumath", "run", str(params), "--outputs", str(outputs)]
    seconds, error = run_part("quickstart", command, scratch)
    result = {"command": command, "params": str(params) if size != "tiny" else TINY_QUICKSTART, "seconds": seconds}
    if error:
        return dict(result, error=error)
    run_dir = next(path for path in outputs.iterdir() if path.is_dir())
    for name in ("evaluate", "evaluate.base"):
        summary = run_dir / name / "summary.json"
        if summary.exists():
            result[f"{name}_summary"] = json.loads(summary.read_text())
    stats = run_dir / "stage2" / "stats.json"
    if stats.exists():
        stage2 = json.loads(stats.read_text())
        result["stage2"] = {key: stage2.get(key) for key in ("device", "tokens_per_second", "mfu", "seconds")}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="'embedded' or a local model folder")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: shows the script works (e.g. on CPU)")
    parser.add_argument("--only", nargs="+", choices=PARTS)
    parser.add_argument("--skip", nargs="+", choices=PARTS, default=[])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "full"
    host = machine()
    parts = [part for part in (args.only or PARTS) if part not in args.skip]
    runners = {"sft": sft_part, "evaluate": evaluate_part, "qlora": qlora_part, "quickstart": quickstart_part}
    report = {"machine": host, "sizes": size, "model": args.model, "command": " ".join([sys.executable] + sys.argv),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "note": ("toy sizes: shows that the script runs; not a performance measurement" if size == "tiny"
                       else "the sizes a GPU measurement uses"),
              "parts": {}}
    if host["device"] != "cuda":
        report["note"] += "; measured on CPU: no MFU, GPU numbers not measured"
    out = Path(args.out or HERE / "results" / f"gpu-{host['device']}{'-tiny' if size == 'tiny' else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mumath-gpu-bench-") as scratch:
        if size == "tiny" and args.model == "embedded":
            args.model = toy_model(Path(scratch) / "toy-model")
            report["model"] = "toy: the embedded model's config with 2 layers of width 64, random weights"
        for part in parts:
            report["parts"][part] = runners[part](args, size, Path(scratch))
            report["machine"]["load_average_end"] = round(os.getloadavg()[0], 1)
            out.write_text(json.dumps(report, indent=2, default=str))  # after each part: nothing lost on a crash
    failed = [part for part, result in report["parts"].items() if "error" in result]
    print(json.dumps({part: {k: v for k, v in result.items() if k not in ("command", "error")}
                      for part, result in report["parts"].items()}, indent=1, default=str))
    print(f"wrote {out}" + (f"; FAILED parts: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
