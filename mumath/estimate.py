"""What a params file will cost, before anything runs: ``python -m mumath check --estimate params/x.yaml``.

From the steps and parameters of the file (seed benchmarks and samples per method, samples per stage,
benchmarks and limits, the teacher's prices per 1M tokens) it estimates:

- the teacher's requests, prompt and completion tokens and cost, per step (augment, synthesize-cot,
  synthesize-tir);
- training GPU hours per stage: training tokens x epochs / throughput, where the throughput of one GPU is
  ``mfu x peak FLOP/s / (6 x parameters)`` (the usual 6N FLOPs per trained token);
- evaluation GPU hours: generated tokens / decode throughput of one GPU (vLLM-style batched serving).

Token counts per request are ASSUMPTIONS (`ASSUMPTIONS`, documented below) unless ``--usage-from <run>``
names a finished run: then they are MEASURED from its teacher accounting (`augment/stats.json`), its
solutions (`synthesize/<stage>.jsonl`: tokens and requests per solution) and its evaluation metrics (tokens
per problem), and keep shares from its augment and filter statistics; training throughput comes from its
stages' `stats.json`: a GPU run's measured MFU (and GPU type) replaces the assumed MFU 0.40 on an A100, and
its tokens/s per GPU is used as is for a stage that trains a model of the same size. A CPU run has no MFU:
its tokens/s is reported, the GPU assumption kept. Every number says which it is.
"""
import re
from pathlib import Path

from .config import ParamsError, load_params

# Rows of the published splits (the registry's table in the README); a split not here needs a `limit`.
SPLIT_ROWS = {"gsm8k:train": 7473, "gsm8k:test": 1319, "math:train": 7500, "math:train_offline": 4500,
              "math:test": 5000, "math500:test": 500, "gsm-hard:test": 1319, "svamp:test": 1000,
              "asdiv:test": 2215, "mawps:test": 2065, "mawps-addsub:test": 395, "mawps-singleeq:test": 508,
              "mawps-singleop:test": 562, "mawps-multiarith:test": 600, "tabmwp:test": 1000}

# Defaults used where nothing is measured. Token counts are per request for a GSM8K/MATH-sized problem with
# the shipped prompt templates, zero-shot; each few-shot example adds `few_shot_example_tokens` to a prompt.
ASSUMPTIONS = {
    "augment_prompt_tokens": 250, "augment_completion_tokens": 120,  # per augmentation request
    "augment_keep_share": 0.8,            # new questions that pass their validator
    "fobar_teacher_share": 0.05,          # seeds without a number to mask: FOBAR asks the teacher for those only
    "cot_prompt_tokens": 250, "cot_completion_tokens": 350,          # per CoT solution (one request)
    "tir_requests_per_solution": 2.5,     # rounds: one request per code block, plus the final one
    "tir_prompt_tokens_per_request": 550, "tir_completion_tokens_per_request": 180,
    "few_shot_example_tokens": 300,
    "filter_keep_share": 0.6,             # synthesized solutions that pass the filter (step 3)
    "train_tokens_per_row": {"stage1": 450, "stage2": 750},  # prompt + solution (+ execution outputs)
    "train_epochs": 3.0,                  # the paper's recipe, used when the file has no stage1/stage2 step
    "gpu": "A100-80GB", "gpu_peak_flops": 312e12,  # dense bf16
    "train_mfu": 0.40,                    # ZeRO-3 full fine-tuning of a 7B model reaches roughly this
    "eval_completion_tokens": {"tir": 450, "cot": 350},  # generated per problem (all rounds)
    "eval_decode_tokens_per_second_7b": 2500,  # one GPU, batched (vLLM); scaled by 7B / model size
    "model_billions": 7.0,                # when no model name says its size
    # The CPU estimate (the embedded model on 2 cores with native bf16; see docs/cpu-speed.md for the runs
    # these come from): training tokens/s under precision auto (bf16 autocast), engine decode tokens/s, the
    # share of reference solutions that pass the filter, and tokens per training row.
    "cpu_train_tokens_per_second": 200, "cpu_eval_tokens_per_second": 150,
    "cpu_reference_keep_share": {"stage1": 0.99, "stage2": 0.77},
    "cpu_train_tokens_per_row": {"stage1": 210, "stage2": 360},
    "cpu_eval_completion_tokens": {"tir": 220, "cot": 160},
    "cpu_minutes_per_step": 0.5,          # kernel start, model load, writing outputs
}


def split_rows(spec, default_split, limit):
    """Problems taken from 'name' or 'name:split' with a `limit` (None: the whole split)."""
    name, _, split = spec.partition(":")
    key = f"{name}:{split or default_split}"
    if limit is not None:
        return min(limit, SPLIT_ROWS.get(key, limit))
    if key not in SPLIT_ROWS:
        raise ParamsError(f"estimate: the size of '{key}' is not known; give the step a `limit`")
    return SPLIT_ROWS[key]


def step_params(plan, step):
    """A step's parameters as its notebook will see them: the schema's defaults, then the plan's values."""
    from .config import step_of
    from .params import step_defaults, to_flat

    return {**to_flat(step_of(step), step_defaults(step_of(step))), **plan[step]}


def model_billions(name, default):
    """Parameters in billions from a model name: 'meta-llama/Llama-2-7b-hf' -> 7; 'embedded' -> 0.135."""
    name = str(name or "")
    if name == "embedded":
        return 0.135  # SmolLM2-135M-Instruct
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])", Path(name).name or name)
    if not match:
        return default
    value = float(match.group(1))
    return value / 1000 if match.group(2) in "mM" else value


# ------------------------------------------------------------------------------------------ measured

def measured_usage(run_dir):
    """Token counts and keep shares measured in a finished run (only those it has), with their sources."""
    from .records import read_json, read_jsonl

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ParamsError(f"--usage-from {run_dir}: not a run folder")
    found, sources = {}, {}
    stats = read_json(run_dir / "augment" / "stats.json", missing_ok=True) or {}
    step = ((stats.get("usage") or {}).get("by_step") or {}).get("augment") or {}
    if step.get("requests"):
        found["augment_prompt_tokens"] = step["prompt_tokens"] / step["requests"]
        found["augment_completion_tokens"] = step["completion_tokens"] / step["requests"]
        sources["augment tokens"] = f"{run_dir}/augment/stats.json ({step['requests']} requests)"
    methods = {k: v for k, v in (stats.get("methods") or {}).items() if isinstance(v, dict)}
    asked = sum(v.get("kept", 0) + v.get("rejected", 0) for v in methods.values())
    if asked:
        found["augment_keep_share"] = sum(v.get("kept", 0) for v in methods.values()) / asked
        sources["augment keep share"] = f"{run_dir}/augment/stats.json ({asked} questions)"
    for stage in ("cot", "tir"):
        rows = [row for row in read_jsonl(run_dir / "synthesize" / f"{stage}.jsonl") if "completion_tokens" in row]
        if not rows:
            continue
        requests = sum(max(1, row.get("rounds") or 1) for row in rows)
        prompt, completion = sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows)
        if stage == "cot":
            found.update(cot_prompt_tokens=prompt / len(rows), cot_completion_tokens=completion / len(rows))
        else:
            found.update(tir_requests_per_solution=requests / len(rows),
                         tir_prompt_tokens_per_request=prompt / requests,
                         tir_completion_tokens_per_request=completion / requests)
        found.setdefault("train_tokens_per_row", dict(ASSUMPTIONS["train_tokens_per_row"]))
        # a training row: the question (one request's prompt, few-shot included: an upper bound) + the solution
        found["train_tokens_per_row"]["stage1" if stage == "cot" else "stage2"] = (prompt / requests) + \
            completion / len(rows)
        found["few_shot_example_tokens"] = 0  # measured prompts already hold the run's few-shot examples
        sources[f"synthesize-{stage} tokens"] = f"{run_dir}/synthesize/{stage}.jsonl ({len(rows)} solutions)"
    funnel = read_json(run_dir / "filter" / "funnel.json", missing_ok=True) or {}
    steps = list((funnel.get("stages") or {}).values())
    rows_in = sum(s.get("input", 0) for s in steps)
    if rows_in:
        found["filter_keep_share"] = sum(list(s.values())[-1] for s in steps) / rows_in
        sources["filter keep share"] = f"{run_dir}/filter/funnel.json ({rows_in} rows)"
    per_mode = {}
    for path in sorted((run_dir / "evaluate").rglob("metrics.json")) if (run_dir / "evaluate").exists() else []:
        metrics = read_json(path, missing_ok=True) or {}
        if metrics.get("n") and metrics.get("mode"):
            entry = per_mode.setdefault(metrics["mode"], [0, 0])
            entry[0] += metrics.get("completion_tokens", 0)
            samples = next((int(key[4:]) for key in metrics if key.startswith("maj@")), 1)
            entry[1] += metrics["n"] * samples  # completion tokens cover every sample
    if per_mode:
        found["eval_completion_tokens"] = dict(ASSUMPTIONS["eval_completion_tokens"],
                                               **{mode: tokens / n for mode, (tokens, n) in per_mode.items() if n})
        sources["evaluation tokens"] = f"{run_dir}/evaluate/**/metrics.json"
    return found, sources


def measured_training(run_dir):
    """Each training stage of a finished run (`<run>/<stage>/stats.json`): the job's tokens/s, processes,
    parameters, device, GPU and MFU (None on CPU)."""
    from .records import read_json

    stages = {}
    for path in sorted(Path(run_dir).glob("*/stats.json")):
        stats = read_json(path) or {}
        if not stats.get("tokens_per_second") or "finetune" not in stats:
            continue  # not a training stage, or one that trained nothing
        stages[path.parent.name] = {key: stats.get(key) for key in (
            "tokens_per_second", "processes", "parameters", "device", "gpu", "mfu", "finetune", "tokens_trained")}
        stages[path.parent.name]["source"] = str(path)
    return stages


def apply_measured_training(values, stages, sources):
    """A GPU run's MFU (tokens-weighted over its stages) and GPU type replace the assumed ones."""
    from .sft import peak_flops

    on_gpu = [stage for stage in stages.values() if stage["mfu"] and peak_flops(stage["gpu"])]
    if on_gpu:
        weights = [stage["tokens_trained"] or 1 for stage in on_gpu]
        values["train_mfu"] = sum(s["mfu"] * w for s, w in zip(on_gpu, weights)) / sum(weights)
        values["gpu"], values["gpu_peak_flops"] = on_gpu[0]["gpu"], peak_flops(on_gpu[0]["gpu"])
        sources["training MFU and GPU"] = ", ".join(stage["source"] for stage in on_gpu)
    for name, stage in stages.items():
        if not stage["mfu"]:
            sources[f"{name} throughput"] = (
                f"{stage['source']}: {stage['tokens_per_second']:,} tokens/s on {stage['device']} "
                f"({stage['processes']} process(es)); no MFU measured there, so the GPU estimate keeps the "
                "assumed MFU")
    return values


def training_throughput(stage, size, values, measured, mfu_measured):
    """Tokens/s on one GPU for a stage: measured when the run trained a model of this size on a GPU, else
    MFU x peak / (6 x parameters); with where the number comes from."""
    run = measured.get(stage)
    if run and run["mfu"] and run["parameters"] and abs(run["parameters"] / (size * 1e9) - 1) < 0.1:
        per_gpu = run["tokens_per_second"] / max(1, run["processes"] or 1)
        return per_gpu, f"measured: {run['source']} ({run['gpu']}, {run['processes']} process(es))"
    per_gpu = values["train_mfu"] * values["gpu_peak_flops"] / (6 * size * 1e9)
    return per_gpu, f"MFU {values['train_mfu']:.3g} ({'measured' if mfu_measured else 'assumed'}) on {values['gpu']}"


# ------------------------------------------------------------------------------------------ estimate

def corpus_solutions(params):
    """{stage: rows} a corpus import brings: a local copy is read (each row's stage from its solution), a hub
    corpus counts its entry's `rows` (or `corpus_limit`) as its `stage` (auto: code-nested)."""
    from .corpus import (CorpusError, DEFAULT_MARKERS, corpus_rows, field_text, read_corpus, resolve_corpus)

    solutions = {}
    try:
        for name in params["corpora"] or []:
            entry, (kind, _) = resolve_corpus(name, params["data_dir"], params["extra_corpora"])
            if kind == "local":
                _, rows, _ = read_corpus(name, params["data_dir"], params["extra_corpora"], params["corpus_limit"])
                code_open = (entry.get("markers") or {}).get("code", DEFAULT_MARKERS["code"])[0]
                for row in rows:
                    stage = entry.get("stage", "auto")
                    if stage == "auto":
                        text = field_text(row, entry["solution"], entry, row.get("_where", name))
                        stage = "tir" if code_open in text else "cot"
                    solutions[stage] = solutions.get(stage, 0) + 1
            else:
                stage = "cot" if entry.get("stage") == "cot" else "tir"
                solutions[stage] = solutions.get(stage, 0) + corpus_rows(name, params["data_dir"],
                                                                         params["extra_corpora"], params["corpus_limit"])
    except CorpusError as error:
        raise ParamsError(f"estimate: {error}") from error
    return solutions


def _teacher_entry(requests, prompt_tokens, completion_tokens, params):
    prices = (params.get("teacher_price_per_1m_prompt"), params.get("teacher_price_per_1m_completion"))
    cost = None if None in prices else (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6
    return {"requests": round(requests), "prompt_tokens": round(prompt_tokens),
            "completion_tokens": round(completion_tokens), "cost_usd": cost, "teacher": params.get("teacher_model"),
            "prices_per_1m": prices}


def estimate(params_file, usage_from=None, assumptions=None):
    """The estimate for a params file (see the module docs); a dict that `format_estimate` prints."""
    run_name, plan = load_params(params_file)
    values = dict(ASSUMPTIONS, **(assumptions or {}))
    measured, sources = measured_usage(usage_from) if usage_from else ({}, {})
    values.update(measured)
    trained = measured_training(usage_from) if usage_from else {}
    apply_measured_training(values, trained, sources)
    if "training MFU and GPU" in sources:
        measured.update(train_mfu=values["train_mfu"], gpu=values["gpu"], gpu_peak_flops=values["gpu_peak_flops"])
    teacher, questions, solutions = {}, 0, {}

    if "augment" in plan:
        p = step_params(plan, "augment")
        seeds = sum(split_rows(spec, "train", p["seeds_per_benchmark"]) for spec in p["seed_benchmarks"])
        methods = p["methods"] or {}
        rewrites = seeds * (methods.get("rephrase", 0) + methods.get("alter", 0))
        fobar = seeds * max(methods.get("fobar", 0), 1) if methods.get("fobar") or methods.get("bf_trans") else 0
        bf_trans = fobar * methods.get("bf_trans", 0)
        requests = rewrites + fobar * values["fobar_teacher_share"] + bf_trans
        teacher["augment"] = _teacher_entry(requests, requests * values["augment_prompt_tokens"],
                                            requests * values["augment_completion_tokens"], p)
        questions = (rewrites + bf_trans) * values["augment_keep_share"] + seeds * methods.get("fobar", 0)
        teacher["augment"].update(seeds=seeds, new_questions=round(questions))

    if "synthesize" in plan and step_params(plan, "synthesize")["solution_source"] == "corpus":
        p = step_params(plan, "synthesize")
        solutions = corpus_solutions(p)  # no teacher: the corpus's rows are the solutions
    elif "synthesize" in plan:
        p = step_params(plan, "synthesize")
        seeds = sum(split_rows(spec, "train", p["seeds_per_benchmark"]) for spec in p["seed_benchmarks"]) \
            if p["include_seeds"] else 0
        total = seeds + questions
        shots = p["few_shot"] * values["few_shot_example_tokens"]
        for stage, samples in (p["stages"] or {}).items():
            solutions[stage] = total * samples
            if stage == "cot":
                requests, per = solutions[stage], 1
                prompt_tokens = requests * (values["cot_prompt_tokens"] + shots)
                completion_tokens = requests * values["cot_completion_tokens"]
            else:
                per = min(values["tir_requests_per_solution"], p["max_rounds"] + 1)
                requests = solutions[stage] * per
                prompt_tokens = requests * (values["tir_prompt_tokens_per_request"] + shots)
                completion_tokens = requests * values["tir_completion_tokens_per_request"]
            teacher[f"synthesize-{stage}"] = _teacher_entry(requests, prompt_tokens, completion_tokens, p)
            teacher[f"synthesize-{stage}"].update(questions=round(total), solutions=round(solutions[stage]))

    training = {}
    for stage, data in (("stage1", "cot"), ("stage2", "tir")):
        if data not in solutions and stage not in plan:
            continue
        p = plan.get(stage, {})
        init = p.get("init_model") or plan.get("stage1", {}).get("init_model") or \
            (plan.get("evaluate") or {}).get("model")
        size = model_billions(init, values["model_billions"])
        rows = solutions.get(data, 0) * values["filter_keep_share"]
        epochs = float(p.get("epochs", values["train_epochs"]))
        tokens = rows * values["train_tokens_per_row"][stage] * epochs
        if (p.get("max_steps") or -1) > 0 and p.get("global_batch_size"):  # the training branch's max_steps
            epochs = p["max_steps"] * p["global_batch_size"] / max(rows, 1)
            tokens = p["max_steps"] * p["global_batch_size"] * values["train_tokens_per_row"][stage]
        per_gpu, throughput_from = training_throughput(stage, size, values, trained,
                                                       "training MFU and GPU" in sources)
        training[stage] = {"rows": round(rows), "epochs": epochs, "tokens": round(tokens), "model": init,
                           "model_billions": size, "tokens_per_gpu_second": round(per_gpu),
                           "throughput_from": throughput_from, "gpu_hours": tokens / per_gpu / 3600,
                           "from": "the file's training step" if stage in plan else
                           f"if trained as the paper does ({epochs:g} epochs); the file has no {stage} step"}

    evaluation = {}
    if "evaluate" in plan:
        p = step_params(plan, "evaluate")
        problems = sum(split_rows(spec, p["split"], p["limit"]) for spec in p["benchmarks"])
        size = model_billions(p["model"], values["model_billions"])
        per_gpu = values["eval_decode_tokens_per_second_7b"] * 7.0 / size
        for mode in p["modes"]:
            tokens = problems * p["n_samples"] * values["eval_completion_tokens"].get(mode, 400)
            evaluation[mode] = {"problems": problems, "samples": p["n_samples"], "generated_tokens": round(tokens),
                                "model": p["model"], "tokens_per_gpu_second": round(per_gpu),
                                "gpu_hours": tokens / per_gpu / 3600}

    # The CPU estimate is for plans that train or evaluate the embedded model (the one sized for CPUs).
    uses_embedded = any("embedded" in ((plan.get(key) or {}).get("model"), (plan.get(key) or {}).get("init_model"))
                        for key in plan)
    cpu = cpu_estimate(plan, values) if uses_embedded else None
    known_costs = [entry["cost_usd"] for entry in teacher.values()]
    gpu = {"name": values["gpu"], "peak_flops": values["gpu_peak_flops"], "train_mfu": values["train_mfu"],
           "train_mfu_from": ("measured in " + sources["training MFU and GPU"]) if "training MFU and GPU" in sources
           else "assumed",
           "train_tokens_per_gpu_second_7b": round(values["train_mfu"] * values["gpu_peak_flops"] / (6 * 7e9)),
           "eval_decode_tokens_per_second_7b": values["eval_decode_tokens_per_second_7b"]}
    return {"gpu": gpu, "params_file": str(params_file), "run": run_name, "teacher": teacher, "training": training,
            "evaluation": evaluation, "cpu": cpu, "assumptions": {k: v for k, v in values.items() if k not in measured},
            "measured": measured, "measured_from": sources,
            "totals": {"teacher_requests": sum(e["requests"] for e in teacher.values()),
                       "prompt_tokens": sum(e["prompt_tokens"] for e in teacher.values()),
                       "completion_tokens": sum(e["completion_tokens"] for e in teacher.values()),
                       "cost_usd": sum(known_costs) if known_costs and None not in known_costs else None,
                       "training_gpu_hours": sum(e["gpu_hours"] for e in training.values()),
                       "evaluation_gpu_hours": sum(e["gpu_hours"] for e in evaluation.values())}}


def cpu_estimate(plan, values):
    """Hours of the whole plan on CPU for the embedded model: every stage* and evaluate* step (variants too)."""
    from .config import step_of

    seeds = 0
    if "synthesize" in plan:
        p = step_params(plan, "synthesize")
        seeds = sum(split_rows(spec, "train", p["seeds_per_benchmark"]) for spec in p["seed_benchmarks"])
    steps = {}
    for key in plan:
        step = step_of(key)
        p = step_params(plan, key) if step in ("stage1", "stage2", "evaluate") else None
        if step in ("stage1", "stage2"):
            rows = seeds * values["cpu_reference_keep_share"][step] * float(p.get("data_fraction", 1.0))
            if p.get("limit"):
                rows = min(rows, p["limit"])
            tokens = rows * values["cpu_train_tokens_per_row"][step]
            if (p.get("max_steps") or -1) > 0:
                tokens = min(tokens, p["max_steps"] * p["global_batch_size"] * values["cpu_train_tokens_per_row"][step])
            else:
                tokens *= float(p.get("epochs", 1.0))
            steps[key] = {"rows": round(rows), "tokens": round(tokens),
                          "hours": tokens / values["cpu_train_tokens_per_second"] / 3600}
        elif step == "evaluate":
            problems = sum(split_rows(spec, p["split"], p["limit"]) for spec in p["benchmarks"])
            tokens = sum(problems * min(p["max_new_tokens"] * max(1, p["max_rounds"]),
                                        values["cpu_eval_completion_tokens"].get(mode, 200)) for mode in p["modes"])
            steps[key] = {"problems": problems, "modes": list(p["modes"]), "tokens": round(tokens),
                          "hours": tokens / values["cpu_eval_tokens_per_second"] / 3600}
    overhead = len(plan) * values["cpu_minutes_per_step"] / 60
    return {"steps": steps, "overhead_hours": overhead,
            "hours": sum(entry["hours"] for entry in steps.values()) + overhead}


def format_estimate(result):
    """The estimate as the lines `check --estimate` prints."""
    def tokens(n):
        return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)

    lines = [f"estimate for {result['params_file']} (run '{result['run']}'):"]
    for step, e in result["teacher"].items():
        cost = f"${e['cost_usd']:,.2f}" if e["cost_usd"] is not None else "cost unknown (set price_per_1m_prompt " \
                                                                           "and price_per_1m_completion)"
        lines.append(f"  teacher {step}: {e['requests']:,} requests, {tokens(e['prompt_tokens'])} prompt + "
                     f"{tokens(e['completion_tokens'])} completion tokens, {cost} ({e['teacher']})")
    totals = result["totals"]
    if result["teacher"]:
        cost = f"${totals['cost_usd']:,.2f}" if totals["cost_usd"] is not None else "unknown"
        lines.append(f"  teacher total: {totals['teacher_requests']:,} requests, {tokens(totals['prompt_tokens'])} "
                     f"+ {tokens(totals['completion_tokens'])} tokens, cost {cost}")
    a, g = result["assumptions"], result["gpu"]
    gpu = g["name"]
    lines.insert(1, f"  GPU: {gpu}, {g['peak_flops'] / 1e12:g} TFLOP/s dense bf16 peak; training at MFU "
                    f"{g['train_mfu']:.3g} ({g['train_mfu_from']}) = {g['train_tokens_per_gpu_second_7b']:,} "
                    f"tokens/s/GPU for a 7B model; evaluation decodes {g['eval_decode_tokens_per_second_7b']:,} "
                    "tokens/s/GPU for a 7B model (assumed, vLLM-style batching); other sizes scale by 7B / size")
    for stage, e in result["training"].items():
        lines.append(f"  training {stage}: {e['rows']:,} rows x {e['epochs']:g} epochs = {tokens(e['tokens'])} "
                     f"tokens on a {e['model_billions']:g}B model at {e['tokens_per_gpu_second']:,} tokens/s/GPU "
                     f"({e['throughput_from']}) -> {e['gpu_hours']:.3g} {gpu} GPU hours ({e['from']})")
    for mode, e in result["evaluation"].items():
        lines.append(f"  evaluation {mode}: {e['problems']:,} problems x {e['samples']} samples, "
                     f"{tokens(e['generated_tokens'])} generated tokens at {e['tokens_per_gpu_second']:,} tokens/s/GPU "
                     f"-> {e['gpu_hours']:.3g} {gpu} GPU hours")
    lines.append(f"  GPU hours ({gpu}): training {totals['training_gpu_hours']:.3g}, evaluation "
                 f"{totals['evaluation_gpu_hours']:.3g}")
    if result.get("cpu"):
        cpu = result["cpu"]
        lines.insert(1, f"  CPU estimate (embedded model, 2 cores with native bf16): {cpu['hours']:.2f} h = "
                        + " + ".join(f"{key} {entry['hours'] * 60:.0f} min" for key, entry in cpu["steps"].items())
                        + f" + {cpu['overhead_hours'] * 60:.0f} min per-step overhead (assumptions cpu_*)")
    if result["measured_from"]:
        lines.append("  measured: " + "; ".join(f"{k} from {v}" for k, v in result["measured_from"].items()))
    lines.append("  assumed (mumath/estimate.py ASSUMPTIONS; --usage-from <run> measures them): " + ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in a.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the CLI hook

def add_estimate_arguments(check_parser):
    check_parser.add_argument("--estimate", action="store_true",
                              help="also print the teacher's requests, tokens and cost, and GPU hours")
    check_parser.add_argument("--usage-from", metavar="RUN_DIR",
                              help="measure token counts, keep shares and training throughput (tokens/s, MFU and "
                                   "GPU from its stages' stats.json) from this finished run")


def print_estimate(args, params_file):
    if getattr(args, "estimate", False):
        print(format_estimate(estimate(params_file, usage_from=args.usage_from)))
