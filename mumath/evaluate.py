"""Evaluate a model on registry benchmarks: trajectories JSONL + metrics JSON per benchmark and mode.

Layout: ``<out_dir>/<benchmark>/<mode>/trajectories.jsonl`` (one line per problem and sample, appended
the moment its trajectory finishes, so a crash loses only the ones in flight) and ``metrics.json``. A
re-run skips every (problem, sample) already in the JSONL.
"""
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .backends import Sampling
from .grading import extract_answer, is_equivalent
from .prompts import build_messages
from .records import append_jsonl, read_jsonl, write_jsonl
from .tir import run_tool_loop


@dataclass
class EvalConfig:
    mode: str = "tir"
    few_shot: int = 0
    max_rounds: int = 4
    n_samples: int = 1
    sampling: Sampling = None
    carry_state: bool = False
    chunk_size: int = 256  # trajectories in flight at most (each is written as soon as it finishes)
    prompt_dir: str = None
    exec_workers: int = None  # threads feeding the sandbox; None: the machine's cores

    def __post_init__(self):
        self.sampling = self.sampling or Sampling()
        if self.n_samples > 1 and self.sampling.temperature == 0:
            raise ValueError("parameter 'n_samples' > 1 (maj@k) needs 'temperature' > 0")


def _rewrite_without_torn_tail(path, rows):
    """Drop a partial last line (left by a kill mid-write) so appends start on a clean line."""
    if path.exists() and sum(1 for _ in open(path)) != len(rows):
        write_jsonl(path, rows)


def evaluate_records(backend, executor, records, config, out_dir, benchmark="", progress=True):
    """Run (or resume) one benchmark in one mode; returns its metrics."""
    return evaluate_suites(backend, executor, {benchmark: (records, out_dir)}, config, progress)[0]


def evaluate_suites(backend, executor, suites, config, progress=True):
    """Run (or resume) several benchmarks in one mode, batched together; returns metrics per benchmark.

    `suites` maps a benchmark name to (records, out_dir). Pending problems of all benchmarks share
    the generation batches, so small per-benchmark samples still fill the model's batch.
    """
    todo = []
    for benchmark, (records, out_dir) in suites.items():
        path = Path(out_dir) / "trajectories.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        done_rows = read_jsonl(path)
        _rewrite_without_torn_tail(path, done_rows)
        done = {(row["id"], row["sample"]) for row in done_rows}
        todo += [(benchmark, path, record, sample) for record in records for sample in range(config.n_samples)
                 if (record["id"], sample) not in done]
    bar = tqdm(total=len(todo), desc=f"evaluate {config.mode}", disable=not progress)
    prompts = [backend.format_prompt(build_messages(record["question"], config.mode, config.few_shot,
                                                    config.prompt_dir)) for _, _, record, _ in todo]

    def write(index, trajectory):  # each trajectory is written the moment it finishes
        benchmark, path, record, sample = todo[index]
        append_jsonl(path, [trajectory_row(record, sample, trajectory, config.mode, benchmark)])
        bar.update()

    run_tool_loop(backend, prompts, executor, config.sampling, max_rounds=config.max_rounds,
                  execute=config.mode == "tir", carry_state=config.carry_state, on_finish=write,
                  exec_workers=config.exec_workers, max_in_flight=config.chunk_size)
    bar.close()
    results = []
    for benchmark, (records, out_dir) in suites.items():
        wanted = {record["id"] for record in records}
        rows = [row for row in read_jsonl(Path(out_dir) / "trajectories.jsonl") if row["id"] in wanted]
        metrics = compute_metrics(rows, config.n_samples)
        metrics.update(benchmark=benchmark, mode=config.mode, few_shot=config.few_shot)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        results.append(metrics)
    return results


def trajectory_row(record, sample, trajectory, mode, benchmark):
    pred = extract_answer(trajectory.generation)
    correct = is_equivalent(pred, record["answer"], record["meta"].get("choices"))
    return {"id": record["id"], "sample": sample, "benchmark": benchmark, "mode": mode,
            "question": record["question"], "answer": record["answer"], "pred": pred, "correct": correct,
            **trajectory.to_dict()}


def wilson_interval(successes, n, z=1.96):
    """95 % Wilson score interval for a proportion (well-behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def majority_answer(rows):
    """The most common extracted answer over samples, grouping equivalent answers together."""
    groups = []  # [representative, count, correct]
    for row in rows:
        if row["pred"] is None:
            continue
        for group in groups:
            if is_equivalent(row["pred"], group[0]):
                group[1] += 1
                break
        else:
            groups.append([row["pred"], 1, row["correct"]])
    if not groups:
        return None, False
    best = max(groups, key=lambda group: group[1])
    return best[0], best[2]


def compute_metrics(rows, n_samples=1):
    first = [row for row in rows if row["sample"] == 0]
    n = len(first)
    correct = sum(row["correct"] for row in first)
    low, high = wilson_interval(correct, n)
    executions = [execution for row in first for execution in row["executions"]]
    metrics = {
        "n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": [low, high],
        "executions": len(executions),
        "execution_errors": sum(1 for execution in executions if execution["error"]),
        "execution_timeouts": sum(1 for execution in executions if execution["timed_out"]),
        "no_answer": sum(1 for row in first if row["pred"] is None),
        "mean_rounds": sum(row["rounds"] for row in first) / n if n else 0.0,
        "finish": dict(Counter(row["finish"] for row in first)),
        "prompt_tokens": sum(row["prompt_tokens"] for row in rows),
        "completion_tokens": sum(row["completion_tokens"] for row in rows),
    }
    if n_samples > 1:
        by_problem = {}
        for row in rows:
            by_problem.setdefault(row["id"], []).append(row)
        votes = [majority_answer(group)[1] for group in by_problem.values()]
        metrics[f"maj@{n_samples}"] = sum(votes) / len(votes) if votes else 0.0
        metrics[f"pass@{n_samples}"] = sum(any(r["correct"] for r in group)
                                           for group in by_problem.values()) / len(by_problem)
    return metrics


def parse_benchmark_spec(spec, default_split):
    """'gsm8k' or 'math:train_offline' -> (name, split)."""
    name, _, split = spec.partition(":")
    return name, split or default_split


def run_evaluation(run_dir, model="embedded", backend="transformers", base_url=None, api_model=None,
                   api_key_env="OPENAI_API_KEY", tokenizer=None, data_dir=None, benchmarks=("gsm8k",),
                   split="test", extra_benchmarks=None, limit=None, modes=("tir",), few_shot=0,
                   max_new_tokens=512, max_rounds=4, batch_size=32, max_concurrency=16, n_samples=1,
                   temperature=0.0, top_p=1.0, seed=0, carry_state=False, exec_workers=None, exec_timeout=10.0,
                   exec_memory_mb=1024, prompt_dir=None, chunk_size=256, progress=True):
    """Every benchmark x mode of one run -> list of metrics; outputs under <run_dir>/evaluate/."""
    from .backends import make_backend
    from .data import load_benchmark
    from .executor import SandboxPool
    from .manifest import record_inputs
    from .models import resolve_model_path

    inputs = []
    suites = {spec: load_benchmark(*parse_benchmark_spec(spec, split), data_dir=data_dir, limit=limit,
                                   seed=seed, extra=extra_benchmarks, inputs=inputs) for spec in benchmarks}
    engine = make_backend(backend, model, base_url=base_url, api_model=api_model, batch_size=batch_size,
                          max_concurrency=max_concurrency, api_key_env=api_key_env, progress=progress,
                          tokenizer=tokenizer)
    if backend != "openai-chat":
        local_model = resolve_model_path(tokenizer or model) if backend == "openai" else resolve_model_path(model)
        if Path(local_model).exists():
            inputs.append(local_model)
    if prompt_dir:
        inputs.append(prompt_dir)
    record_inputs(run_dir, inputs)
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    results = []
    exec_workers = exec_workers or os.cpu_count() or 1
    with SandboxPool(workers=exec_workers, timeout=exec_timeout, memory_mb=exec_memory_mb) as executor:
        for mode in modes:
            config = EvalConfig(mode=mode, few_shot=few_shot, max_rounds=max_rounds, n_samples=n_samples,
                                sampling=sampling, carry_state=carry_state, prompt_dir=prompt_dir,
                                chunk_size=chunk_size, exec_workers=exec_workers)
            jobs = {spec: (records, Path(run_dir) / "evaluate" / spec.replace(":", "-") / mode)
                    for spec, records in suites.items()}
            results += evaluate_suites(engine, executor, jobs, config, progress=progress)
    (Path(run_dir) / "evaluate" / "summary.json").write_text(json.dumps(results, indent=2))
    return results
