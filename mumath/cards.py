"""Model cards for the training stages, a dataset card for the filtered data, and `push_to_hub` of either.

A stage folder (`<run>/stage1/`, `<run>/stage2/`) gets `README.md`: base model, data, recipe, the training
fingerprint and the run manifest's sha256 and commit, training statistics, and the evaluation table once an
evaluation of this model exists (the analysis step rewrites the card then). `<run>/filter/README.md` is the
dataset card of the filtered stage-1 / stage-2 data (files, row counts, funnel, decontamination).

The card is not written into `final/`: stage 2's reuse fingerprint hashes stage 1's `final/`, so a card
rewritten after evaluation would retrain stage 2. `push_stage` uploads `final/` with the card as its
README.md (plus the training log and TensorBoard event files) in one commit; `push_dataset` uploads the
filtered JSONL files with theirs. The token comes from the environment (`HF_TOKEN`, or a `huggingface-cli
login`), never from a parameter, a manifest or a card.
"""
import hashlib
import json
from pathlib import Path

CARD = "README.md"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what 'embedded' is (dequantized from its Q4_1 GGUF)
PAPER = "MuMath-Code (arXiv 2405.07551)"
DATASET_FILES = ("stage1.jsonl", "stage2.jsonl", "funnel.json", "contamination.json", "stats.json")
TRAINING_FILES = ("stats.json", "log.jsonl", "train_config.json")


class CardError(ValueError):
    pass


def _read_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def manifest_provenance(run_dir):
    """{manifest, sha256, commit, dirty, params_file} of <run_dir>/manifest.json, or None without one."""
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    git = manifest.get("git") or {}
    return {"manifest": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "commit": git.get("commit"), "dirty": git.get("dirty"), "params_file": manifest.get("params_file")}


def base_model_id(init_model):
    """The hub id a card's `base_model` names ('embedded' -> SmolLM2-135M-Instruct); a stage's final folder
    (stage 2 starts from stage 1's) names the model that stage started from; None for another local folder."""
    init_model = str(init_model)
    if init_model == "embedded":
        return EMBEDDED_HUB_ID
    trained = Path(init_model) / "mumath_train.json"
    if trained.exists():
        return base_model_id(json.loads(trained.read_text()).get("init_model", ""))
    if Path(init_model).exists() or init_model.startswith((".", "/", "~")) or init_model.count("/") != 1:
        return None
    return init_model


def _provenance_lines(prov):
    if prov is None:
        return ["- run manifest: none found (the card was written outside a run)"]
    commit = (prov["commit"] or "unknown")[:12] + (" (dirty)" if prov["dirty"] else "")
    return [f"- run manifest: `{prov['manifest']}`, sha256 `{prov['sha256']}` (when this card was written)",
            f"- git commit: `{commit}`; params file: `{prov['params_file']}`"]


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


def evaluation_lines(entries):
    """Markdown table of evaluation entries (`mumath.analysis.evaluation_section`'s)."""
    lines = ["| model | benchmark | mode | n | correct | accuracy % | 95 % CI |", "|---|---|---|---|---|---|---|"]
    for entry in sorted(entries, key=lambda e: (e["role"] != "this model", e["benchmark"], e["mode"])):
        accuracy = entry["accuracy"]
        flag = " (contaminated)" if entry.get("contaminated") else ""
        lines.append(f"| {entry['role']} | {entry['benchmark']}{flag} | {entry['mode']} | {accuracy['n']} | "
                     f"{accuracy['successes']} | {_pct(accuracy['share'])} | "
                     f"{_pct(accuracy['ci95'][0])}-{_pct(accuracy['ci95'][1])} |")
    return lines


def model_card(stage_dir, run_dir=None, evaluation=None):
    """The model card (front matter + markdown) of a trained stage folder."""
    from huggingface_hub import ModelCardData

    stage_dir = Path(stage_dir)
    run_dir = Path(run_dir) if run_dir else stage_dir.parent
    trained = _read_json(stage_dir / "train_config.json")
    if trained is None:
        raise CardError(f"{stage_dir}: no train_config.json (not a trained stage folder)")
    config, stats = trained.get("config") or {}, _read_json(stage_dir / "stats.json") or {}
    base = base_model_id(config.get("init_model", ""))
    metadata = ModelCardData(library_name="transformers", base_model=base, pipeline_tag="text-generation",
                             tags=["math", "tool-integrated-reasoning", "mumath-code", "trl", "sft"])
    examples = stats.get("examples") or {}
    lines = ["---", metadata.to_yaml(), "---", "",
             f"# {run_dir.name} / {stage_dir.name}: a {PAPER} stage ({config.get('mode')} format)", "",
             f"Fine-tuned with this project's `{stage_dir.name}` step (TRL `SFTTrainer`), from "
             f"`{config.get('init_model')}`" + (f" ({base})" if base and base != config.get("init_model") else "")
             + ". Prompts at evaluation must use the same format (system turn, question template, chat template "
               "saved with the model); with `tir` the model writes ```` ```python ```` blocks and expects the "
               "interpreter's ```` ```output ```` after each.", "",
             "## Data", "",
             f"- file: `{config.get('data')}`",
             f"- rows: {examples.get('rows', '-')}, trained examples: {examples.get('examples', '-')}, "
             f"dropped (longer than max_length): {examples.get('dropped_too_long', '-')}",
             f"- tokens per epoch: {examples.get('tokens', '-')}, of which targets (loss): "
             f"{examples.get('target_tokens', '-')}; execution outputs are masked from the loss", "",
             "## Recipe", "",
             "| parameter | value |", "|---|---|"]
    for key in ("finetune", "mode", "epochs", "max_steps", "learning_rate", "lr_scheduler", "warmup_ratio",
                "weight_decay", "global_batch_size", "per_device_batch_size", "max_length", "packing",
                "precision", "lora_r", "lora_alpha", "lora_dropout", "seed"):
        if key in config and not (key.startswith("lora_") and config.get("finetune") == "full"):
            lines.append(f"| {key} | {config[key]} |")
    lines += ["", "## Provenance", "",
              f"- training fingerprint (configuration, data and initial model): `{trained.get('fingerprint')}`"]
    lines += _provenance_lines(manifest_provenance(run_dir))
    if stats:
        lines += ["", "## Training", "",
                  f"- steps: {stats.get('steps')}, epochs: {stats.get('epochs')}, tokens trained: "
                  f"{stats.get('tokens_trained')}, final loss: {stats.get('final_loss')}",
                  f"- device: {stats.get('device')} x {stats.get('processes')}, precision {stats.get('precision')},"
                  f" {stats.get('tokens_per_second')} tokens/s, {stats.get('seconds')} s",
                  "- curves: `log.jsonl` and TensorBoard event files under `runs/` (loss, learning rate, grad norm, "
                  "tokens/s)"]
    lines += ["", "## Evaluation", ""]
    if evaluation:
        lines += ["Accuracy on seeded samples of each benchmark (first sample per problem), 95 % Wilson "
                  "intervals; the base model's rows, where evaluated in the same run, for comparison.", ""]
        lines += evaluation_lines(evaluation)
    else:
        lines.append("Not evaluated yet (the analysis step adds this table once an evaluation of this model exists).")
    return "\n".join(lines) + "\n"


def dataset_card(filter_dir, run_dir=None):
    """The dataset card of the filter step's output folder."""
    from huggingface_hub import DatasetCardData

    filter_dir = Path(filter_dir)
    run_dir = Path(run_dir) if run_dir else filter_dir.parent
    stats = _read_json(filter_dir / "stats.json")
    if stats is None:
        raise CardError(f"{filter_dir}: no stats.json (run the filter step first)")
    outputs = sorted(name for name in (stats.get("outputs") or {}).values() if (filter_dir / name).exists())
    metadata = DatasetCardData(
        configs=[{"config_name": Path(name).stem, "data_files": name} for name in outputs],
        task_categories=["text-generation"], language=["en"], tags=["math", "tool-integrated-reasoning",
                                                                   "mumath-code", "synthetic"])
    funnel = _read_json(filter_dir / "funnel.json") or {}
    contamination = _read_json(filter_dir / "contamination.json") or {}
    lines = ["---", metadata.to_yaml(), "---", "", f"# {run_dir.name} / filter: {PAPER} training data", "",
             "Solutions synthesized by this project's steps 1-2 (augmented questions, teacher and reference "
             "solutions, code blocks run in its sandbox) and kept by step 3's filters. Rows are chat-format: "
             "`question`, `messages` (user, assistant), `answer`, `answer_source`, and the synthesis "
             "statistics of each solution. Licence: that of the seed benchmarks and of the teacher model's "
             "outputs (not restated here).", "",
             "| file | rows |", "|---|---|"]
    for name in outputs:
        with open(filter_dir / name) as handle:
            lines.append(f"| `{name}` | {sum(1 for line in handle if line.strip())} |")
    filters = funnel.get("filters") or []
    if funnel.get("stages"):
        lines += ["", "## Filter funnel", "", "| stage | " + " | ".join(filters) + " |",
                  "|---|" + "---|" * len(filters)]
        lines += [f"| {stage} | " + " | ".join(str(steps.get(name, "-")) for name in filters) + " |"
                  for stage, steps in funnel["stages"].items()]
    lines += ["", "## Decontamination", ""]
    flagged = {name: entry for name, entry in (contamination.get("benchmarks") or {}).items() if entry.get("rows")}
    lines.append(f"{contamination.get('ngram', '-')}-gram overlap with the benchmarks' test questions: " + (
        "; ".join(f"{name}: {entry['rows']} rows ({entry.get('action')})" for name, entry in flagged.items())
        or "none found") + ".")
    if contamination.get("contaminated_for"):
        lines.append(f"**Contaminated for** (overlapping rows kept): {', '.join(contamination['contaminated_for'])}.")
    lines += ["", "## Provenance", ""] + _provenance_lines(manifest_provenance(run_dir))
    return "\n".join(lines) + "\n"


def write_model_card(stage_dir, run_dir=None, evaluation=None):
    path = Path(stage_dir) / CARD
    path.write_text(model_card(stage_dir, run_dir, evaluation))
    return path


def write_dataset_card(filter_dir, run_dir=None):
    path = Path(filter_dir) / CARD
    path.write_text(dataset_card(filter_dir, run_dir))
    return path


def stage_evaluation(stage_dir, entries):
    """The evaluation entries of this stage's model (`<stage>/final`), and the base model's beside them."""
    final = (Path(stage_dir) / "final").resolve()
    mine = [dict(entry, role="this model") for entry in entries if Path(entry["model"]).resolve() == final]
    if not mine:
        return []
    runs = {entry["run"] for entry in mine}
    return mine + [entry for entry in entries if entry["role"] == "base" and entry["run"] in runs]


# ------------------------------------------------------------------------------------------ hub

def stage_files(stage_dir):
    """(path in the repository, local file) of a stage's upload: final/ at the root, the card, logs."""
    stage_dir = Path(stage_dir)
    final = stage_dir / "final"
    if not (final / "config.json").exists():
        raise CardError(f"{final}: no trained model (config.json missing); train the stage first")
    if not (stage_dir / CARD).exists():
        raise CardError(f"{stage_dir / CARD}: no model card; run write_model_card first")
    files = [(str(path.relative_to(final)), path) for path in sorted(final.rglob("*")) if path.is_file()]
    files.append((CARD, stage_dir / CARD))
    files += [(f"training/{name}", stage_dir / name) for name in TRAINING_FILES if (stage_dir / name).exists()]
    files += [(f"runs/{path.relative_to(stage_dir / 'tensorboard')}", path)
              for path in sorted((stage_dir / "tensorboard").rglob("*")) if path.is_file()]
    return files


def dataset_files(filter_dir):
    filter_dir = Path(filter_dir)
    if not (filter_dir / CARD).exists():
        raise CardError(f"{filter_dir / CARD}: no dataset card; run write_dataset_card first")
    return [(CARD, filter_dir / CARD)] + [(name, filter_dir / name) for name in DATASET_FILES
                                        if (filter_dir / name).exists()]


def push(files, repo_id, repo_type, private=True, api=None, message=None):
    """Create the repository (if needed) and upload `files` in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if not repo_id or str(repo_id).count("/") != 1:
        raise CardError(f"parameter 'hub_repo_id' is {repo_id!r}; it must be '<user or org>/<name>'")
    api = api or HfApi()  # token: HF_TOKEN or the cached login, read by huggingface_hub itself
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files]
    info = api.create_commit(repo_id, operations, repo_type=repo_type,
                             commit_message=message or f"mumath-code: upload {len(operations)} files")
    return getattr(info, "commit_url", str(info))


def push_stage(stage_dir, repo_id, private=True, api=None):
    return push(stage_files(stage_dir), repo_id, "model", private, api,
                f"mumath-code: {Path(stage_dir).parent.name}/{Path(stage_dir).name}")


def push_dataset(filter_dir, repo_id, private=True, api=None):
    return push(dataset_files(filter_dir), repo_id, "dataset", private, api,
                f"mumath-code: {Path(filter_dir).parent.name}/filter")


def push_folder(folder, repo_id, private=True, api=None):
    """`python -m mumath push FOLDER`: a stage folder (has final/) or the filter folder (has stats.json)."""
    folder = Path(folder)
    if (folder / "final").is_dir():
        return push_stage(folder, repo_id, private, api)
    if (folder / "funnel.json").exists():
        return push_dataset(folder, repo_id, private, api)
    raise CardError(f"{folder}: neither a trained stage folder (final/) nor a filter folder (funnel.json)")
