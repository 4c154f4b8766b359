"""Evaluate a model on registry benchmarks: trajectories JSONL + metrics JSON per benchmark and mode.

Layout: ``<out_dir>/<benchmark>/<mode>/trajectories.jsonl`` (one line per problem and sample, appended
the moment its trajectory finishes, so a crash loses only the ones in flight), ``metrics.json`` and
``config.json``.

Resume is keyed by a fingerprint of everything that decides an answer (`answer_settings`: model files and
backend, prompt files, mode, few-shot count, decoding, max rounds, carry_state, sandbox limits). Each row
carries it; a re-run skips a (problem, sample) only if its row has the current fingerprint and the same
question and gold answer. Rows of another configuration are moved to ``superseded.jsonl`` beside it, so
the trajectories file and its metrics always describe one configuration.
"""
import hashlib
import json
import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .backends import Sampling, is_request_error
from .grading import extract_answer, is_equivalent, is_graded
from .prompts import build_messages, format_prompt_dir, prompt_files_fingerprint
from .records import append_jsonl, read_jsonl, repair_torn_tail, write_json, write_jsonl
from .tir import run_tool_loop
from .voting import answer_groups, majority_label, voting_metrics, wilson_interval


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
    model_identity: dict = None  # what the model is (files hash, backend); default: the backend's identity
    prompt_format: str = "chat"  # mumath.prompts.PROMPT_FORMATS: the prompt files and chat template
    executor_limits: dict = None  # sandbox limits; default: the executor's own

    def __post_init__(self):
        self.sampling = self.sampling or Sampling()
        if self.n_samples > 1 and self.sampling.temperature == 0:
            raise ValueError("parameter 'n_samples' > 1 (maj@k) needs 'temperature' > 0")


EXECUTOR_LIMITS = ("timeout", "memory_mb", "max_output_chars", "max_file_bytes", "max_processes")


def answer_settings(config, backend=None, executor=None):
    """Everything that decides an answer, as a JSON-able dict (what `config_fingerprint` hashes)."""
    sampling = config.sampling
    limits = config.executor_limits
    if limits is None:
        limits = {key: value for key, value in (getattr(executor, "limits", None) or {}).items()
                  if key in EXECUTOR_LIMITS} or {"timeout": getattr(executor, "timeout", None)}
    return {
        "model": config.model_identity or {"identity": getattr(backend, "identity", type(backend).__name__)},
        "mode": config.mode, "few_shot": config.few_shot,
        # the format's chat template overrides the model's own (absent for "chat": old runs keep their rows)
        **({"prompt_format": config.prompt_format} if config.prompt_format != "chat" else {}),
        "prompts": prompt_files_fingerprint(config.mode, config.few_shot, config_prompt_dir(config)),
        "decoding": {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                     "top_p": sampling.top_p, "seed": sampling.seed,
                     # sampled rows drawn with per-position seeds (before) are not resumed from; greedy keep theirs
                     **({"seeds": "per-trajectory"} if sampling.temperature > 0 else {})},
        "max_rounds": config.max_rounds, "carry_state": config.carry_state,
        "executor": limits if config.mode == "tir" else None,
    }


def config_prompt_dir(config):
    return format_prompt_dir(config.prompt_format, config.prompt_dir)


def config_fingerprint(settings):
    """sha256 (16 hex) of the answer settings: rows with another fingerprint are never resumed from."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _same_problem(row, record):
    return row.get("question") == record["question"] and row.get("answer") == record["answer"]


def resumable_rows(path, records, fingerprint):
    """Rows of `path` that belong to this configuration and these problems; moves the others aside.

    A torn last line (a kill mid-append) is cut off. Rows of another fingerprint, or of a problem whose
    question or gold answer changed since, or whose request failed (finish ``error: ...``, tried again),
    go to ``superseded.jsonl`` in the same folder (kept, not lost).
    """
    path = Path(path)
    repair_torn_tail(path)
    by_id = {record["id"]: record for record in records}
    current, stale, seen = [], [], set()
    for row in read_jsonl(path):
        record = by_id.get(row.get("id"))
        key = (row.get("id"), row.get("sample"))
        if row.get("fingerprint") != fingerprint or (record is not None and not _same_problem(row, record)) \
                or key in seen or is_request_error(row.get("finish")):
            stale.append(row)
        else:
            current.append(row)
            seen.add(key)
    if stale:
        append_jsonl(path.with_name("superseded.jsonl"), stale)
        write_jsonl(path, current)
    return current


def evaluate_records(backend, executor, records, config, out_dir, benchmark="", progress=True):
    """Run (or resume) one benchmark in one mode; returns its metrics."""
    return evaluate_suites(backend, executor, {benchmark: (records, out_dir)}, config, progress)[0]


def evaluate_suites(backend, executor, suites, config, progress=True, extra_metrics=None):
    """Run (or resume) several benchmarks in one mode, batched together; returns metrics per benchmark.

    `suites` maps a benchmark name to (records, out_dir); `extra_metrics` (benchmark -> dict) is merged
    into that benchmark's metrics (e.g. `contaminated`). Pending problems of all benchmarks share
    the generation batches, so small per-benchmark samples still fill the model's batch.
    """
    settings = answer_settings(config, backend, executor)
    fingerprint = config_fingerprint(settings)
    todo = []
    for benchmark, (records, out_dir) in suites.items():
        path = Path(out_dir) / "trajectories.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / "config.json", {"fingerprint": fingerprint, "settings": settings})
        done = {(row["id"], row["sample"]) for row in resumable_rows(path, records, fingerprint)}
        todo += [(benchmark, path, record, sample) for record in records for sample in range(config.n_samples)
                 if (record["id"], sample) not in done]
    bar = tqdm(total=len(todo), desc=f"evaluate {config.mode}", disable=not progress)
    prompts = [backend.format_prompt(build_messages(record["question"], config.mode, config.few_shot,
                                                    config_prompt_dir(config))) for _, _, record, _ in todo]

    def write(index, trajectory):  # each trajectory is written the moment it finishes
        benchmark, path, record, sample = todo[index]
        append_jsonl(path, [dict(trajectory_row(record, sample, trajectory, config.mode, benchmark),
                                 fingerprint=fingerprint)])
        bar.update()

    # Sampling seed per trajectory: `config.sampling.seed` + an offset named by (benchmark, problem, sample),
    # not by its place in this run's to-do list, so a resumed run draws the samples an uninterrupted one would.
    run_tool_loop(backend, prompts, executor, config.sampling, max_rounds=config.max_rounds,
                  execute=config.mode == "tir", carry_state=config.carry_state, on_finish=write,
                  exec_workers=config.exec_workers, max_in_flight=config.chunk_size,
                  seed_offsets=[trajectory_seed_offset(benchmark, record["id"], sample)
                                for benchmark, _, record, sample in todo])
    bar.close()
    results = []
    for benchmark, (records, out_dir) in suites.items():
        metrics = metrics_from_disk(Path(out_dir), records, fingerprint, config.n_samples)
        metrics.update(benchmark=benchmark, mode=config.mode, few_shot=config.few_shot, fingerprint=fingerprint,
                       **(extra_metrics or {}).get(benchmark, {}))
        write_json(Path(out_dir) / "metrics.json", metrics)
        results.append(metrics)
    return results


def trajectory_seed_offset(benchmark, problem_id, sample):
    """A trajectory's seed offset, from what it is: stable across resumes, distinct per problem and sample."""
    return zlib.crc32(f"{benchmark}\x00{problem_id}\x00{sample}".encode()) & 0x3FFFFFFF


def metrics_from_disk(out_dir, records, fingerprint, n_samples=1):
    """Metrics over what `trajectories.jsonl` holds now for these problems under this configuration."""
    by_id = {record["id"]: record for record in records}
    rows, seen = [], set()
    for row in read_jsonl(Path(out_dir) / "trajectories.jsonl"):
        key = (row.get("id"), row.get("sample"))
        if row.get("fingerprint") == fingerprint and key[0] in by_id and key not in seen \
                and key[1] < n_samples and _same_problem(row, by_id[key[0]]):
            rows.append(row)
            seen.add(key)
    return compute_metrics(rows, n_samples)


def trajectory_row(record, sample, trajectory, mode, benchmark):
    pred = extract_answer(trajectory.generation)
    correct = is_equivalent(pred, record["answer"], record["meta"].get("choices")) \
        if is_graded(record["answer"]) else None  # no gold: ungraded, not wrong
    return {"id": record["id"], "sample": sample, "benchmark": benchmark, "mode": mode,
            "question": record["question"], "answer": record["answer"], "pred": pred, "correct": correct,
            **trajectory.to_dict()}


def majority_answer(rows):
    """The most common extracted answer over samples, grouping equivalent answers together, and whether it
    is correct ((None, False) when no sample has an answer); see `voting`."""
    labels, correct, answers = answer_groups(rows)
    best = majority_label(labels, range(len(labels)))
    return (None, False) if best is None else (answers[best], correct[best])


def compute_metrics(rows, n_samples=1):
    """Accuracy over the graded problems (`n`); `ungraded` counts those without a gold answer."""
    everything = [row for row in rows if row["sample"] == 0]
    first = [row for row in everything if row["correct"] is not None]
    n = len(first)
    correct = sum(row["correct"] for row in first)
    low, high = wilson_interval(correct, n)
    executions = [execution for row in everything for execution in row["executions"]]
    metrics = {
        "n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": [low, high],
        "ungraded": len(everything) - n,
        "executions": len(executions),
        "execution_errors": sum(1 for execution in executions if execution["error"]),
        "execution_timeouts": sum(1 for execution in executions if execution["timed_out"]),
        "no_answer": sum(1 for row in everything if row["pred"] is None),
        "mean_rounds": sum(row["rounds"] for row in everything) / len(everything) if everything else 0.0,
        "finish": dict(Counter(row["finish"] for row in everything)),
        # requests the server rejected or that failed after retries (finish "error: ..."): no answer
        "request_errors": sum(1 for row in everything if is_request_error(row["finish"])),
        "prompt_tokens": sum(row["prompt_tokens"] for row in rows),
        "completion_tokens": sum(row["completion_tokens"] for row in rows),
    }
    if n_samples > 1:
        # maj@k and pass@k for k = 1, 2, 4, ..., n with bootstrap intervals (`voting.voting_metrics`), over the
        # graded problems (ungraded ones have no gold to vote for); maj@n / pass@n stay at the top level.

        voting = voting_metrics([row for row in rows if row["correct"] is not None], n_samples)
        metrics["voting"] = voting
        top = voting["by_k"].get(n_samples, {"maj": 0.0, "pass": 0.0})
        metrics[f"maj@{n_samples}"], metrics[f"pass@{n_samples}"] = top["maj"], top["pass"]
    return metrics


def parse_benchmark_spec(spec, default_split):
    """'gsm8k' or 'math:train_offline' -> (name, split)."""
    name, _, split = spec.partition(":")
    return name, split or default_split


def model_identity(backend, model, engine, local_model=None):
    """What the answers come from: backend kind, server and served name, and the sha256 of the local model
    (or tokenizer) files, plus dtype and device for local generation."""
    from .manifest import sha256_path

    identity = {"backend": backend, "model": str(model)}
    if not backend.startswith("transformers"):
        identity.update(base_url=getattr(engine, "base_url", None), api_model=getattr(engine, "model", None))
    if local_model is not None and Path(local_model).exists():
        identity["files"] = sha256_path(local_model)
    loaded = getattr(engine, "model", None)
    if hasattr(loaded, "dtype"):
        identity.update(dtype=str(loaded.dtype), device=loaded.device.type,
                        revision=getattr(loaded.config, "_commit_hash", None))
    return identity


def run_evaluation(run_dir, model="embedded", backend="transformers", base_url=None, api_model=None,
                   api_key_env="OPENAI_API_KEY", tokenizer=None, data_dir=None, benchmarks=("gsm8k",),
                   split="test", extra_benchmarks=None, limit=None, modes=("tir",), few_shot=0,
                   max_new_tokens=512, max_rounds=4, batch_size=32, max_concurrency=None, n_samples=1,
                   temperature=0.0, top_p=1.0, seed=0, carry_state=False, exec_workers=None, exec_timeout=10.0,
                   exec_memory_mb=1024, prompt_dir=None, chunk_size=256, progress=True, step_name="evaluate",
                   prompt_format="chat", context_length=None, server=None):
    """Every benchmark x mode of one run -> list of metrics; outputs under <run_dir>/<step_name>/
    (``evaluate/``, or a variant's ``evaluate.<variant>/``).

    `server` (a `mumath.server.ServerSpec` dict) starts that server for this call and evaluates through
    it (backend ``openai``, its URL and served name, its model's tokenizer, its `max_model_len`); it is
    stopped when the evaluation ends or fails. `max_concurrency` None: the server engine's default
    (512 for vLLM / SGLang), else 16; `chunk_size` is raised to it so that many requests can be in flight.
    """
    settings = dict(locals())
    if server:
        from .server import ManagedServer

        with ManagedServer(server, Path(run_dir) / step_name / "server.log") as served:
            client = served.client_settings()
            settings.update(server=None, backend="openai-chat" if backend == "openai-chat" else "openai",
                            base_url=client["base_url"], api_model=client["api_model"],
                            model=served.spec.model, tokenizer=tokenizer or served.spec.model,
                            context_length=context_length or client["context_length"],
                            max_concurrency=max_concurrency or client["max_concurrency"])
            settings["chunk_size"] = max(chunk_size, settings["max_concurrency"])
            return run_evaluation(**settings)
    max_concurrency = max_concurrency or 16
    from .backends import make_backend
    from .data import load_benchmark
    from .decontaminate import evaluation_contamination
    from .executor import SandboxPool
    from .manifest import record_inputs
    from .models import resolve_model_path

    inputs = []
    suites = {spec: load_benchmark(*parse_benchmark_spec(spec, split), data_dir=data_dir, limit=limit,
                                   seed=seed, extra=extra_benchmarks, inputs=inputs) for spec in benchmarks}
    engine = make_backend(backend, model, base_url=base_url, api_model=api_model, batch_size=batch_size,
                          max_concurrency=max_concurrency, api_key_env=api_key_env, progress=progress,
                          tokenizer=tokenizer, prompt_format=prompt_format, context_length=context_length)
    local_model = None
    if backend != "openai-chat":
        local_model = resolve_model_path(tokenizer or model) if backend == "openai" else resolve_model_path(model)
        if Path(local_model).exists():
            inputs.append(local_model)
    identity = model_identity(backend, model, engine, local_model)
    if prompt_dir:
        inputs.append(prompt_dir)
    record_inputs(run_dir, inputs)
    # True when this run's filtered training data overlaps the benchmark's test questions (warns).
    contaminated = {spec: {"contaminated": evaluation_contamination(run_dir, spec)} for spec in suites}
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    results = []
    exec_workers = exec_workers or os.cpu_count() or 1
    with SandboxPool(workers=exec_workers, timeout=exec_timeout, memory_mb=exec_memory_mb) as executor:
        for mode in modes:
            config = EvalConfig(mode=mode, few_shot=few_shot, max_rounds=max_rounds, n_samples=n_samples,
                                sampling=sampling, carry_state=carry_state, prompt_dir=prompt_dir,
                                prompt_format=prompt_format,
                                chunk_size=chunk_size, exec_workers=exec_workers, model_identity=identity)
            jobs = {spec: (records, Path(run_dir) / step_name / spec.replace(":", "-") / mode)
                    for spec, records in suites.items()}
            results += evaluate_suites(engine, executor, jobs, config, progress=progress,
                                       extra_metrics=contaminated)
    write_json(Path(run_dir) / step_name / "summary.json", results)
    warn_ungraded(results)
    return results


def warn_ungraded(results):
    """At the step's end: which benchmarks had items without a gold answer (left out of their accuracy)."""
    import warnings

    for metrics in results:
        if metrics.get("ungraded"):
            warnings.warn(f"{metrics['benchmark']} ({metrics['mode']}): {metrics['ungraded']} item(s) have no gold "
                          f"answer: marked ungraded and left out of the accuracy (over {metrics['n']} graded)",
                          UserWarning, stacklevel=2)
