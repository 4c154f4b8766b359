"""The parameters of every step, each declared once: type, default, allowed range and one line of doc.

A step's configuration (`AugmentConfig`, ..., `AnalysisConfig`) is a pydantic model made of the step's own
parameters and of named groups shared by several steps (`Teacher`, `Seeds`, `Generation`, `Sandbox`,
`Training`, `Evaluation`). A params file sets groups and shared settings at its top level (``teacher:``,
``training:``, ``seed:``, see `SHARED`) and each step's own values under ``steps.<step>``; `resolve` layers
them (declared default < the step's defaults in `STEPS` < the file's top level < the step's entries) and
validates the result. docs/params.md describes the layout and how to add a parameter.

Every notebook's `parameters` cell (the papermill / Colab interface) is generated from here
(``python -m mumath.param_cells``): one flat name per parameter (a group's prefix + the field name, e.g.
``teacher_model``, ``exec_timeout``), with the declared default and doc line. `from_notebook` turns the cell's
variables back into the step's configuration.
"""
import ast
import copy
import json
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RUN_DIR_DEFAULT = "outputs/notebook-dev"
# Keys of a params file that are not parameters.
META_KEYS = ("run", "steps", "description", "anchors")
# Set by the runner, never by a params file.
RUNNER_FIELDS = ("run_dir", "step_name")


def param(default, doc, flat=None, **constraints):
    """One parameter: its default, one line of doc, its range (ge / gt / le / lt / min_length) and, where
    it differs from prefix + name, its name in a notebook's parameters cell (`flat`)."""
    return Field(default, description=doc, json_schema_extra={"flat": flat} if flat else None, **constraints)


class Settings(BaseModel):
    """A set of parameters: strict types (no '3' for 3), unknown names refused."""
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class Group(Settings):
    """Parameters that several steps share. In a notebook's cell its fields are named `prefix` + name."""
    prefix: ClassVar[str] = ""


NonNegative = Annotated[int, Field(ge=0)]

# ------------------------------------------------------------------------------------------- groups


class Generation(Group):
    max_new_tokens: int = param(512, "tokens generated per call (per round in a tool loop)", ge=1)
    temperature: float = param(0.0, "sampling temperature, 0: greedy", ge=0)
    top_p: float = param(1.0, "nucleus sampling mass", gt=0, le=1)


class Concurrency(Group):
    batch_size: int = param(16, "local generation: requests decoded together", ge=1)
    max_concurrency: Optional[int] = param(None, "server backends: requests in flight; None: 512 with a vLLM / "
                                                 "SGLang managed server, else 16", ge=1)


class Engine(Group):
    model: str = param("embedded", "'embedded', a local folder, a hub id, or the model name on a server")
    backend: Literal["transformers", "transformers-generate", "openai", "openai-chat"] = param(
        "transformers", "transformers (local), openai (completions, any OpenAI-compatible server), openai-chat")
    base_url: Optional[str] = param(None, "an OpenAI-compatible server (vLLM, SGLang, llama.cpp); None: OpenAI")
    api_model: Optional[str] = param(None, "model name on the server (None: `model`)")
    api_key_env: str = param("OPENAI_API_KEY", "the *name* of the environment variable holding the key")
    tokenizer: Optional[str] = param(None, "chat template for the openai completions backend (None: `model`)")
    server: Optional[dict] = param(None, "{engine: vllm|sglang|transformers|llamacpp, model: ...}: a server "
                                         "started for this step and stopped after it (docs/managed-server.md)")


class Teacher(Concurrency, Engine):
    """The model that writes new questions and solutions (steps augment and synthesize)."""
    prefix: ClassVar[str] = "teacher_"
    max_retries: int = param(3, "retries with backoff on 429, 5xx and timeouts", ge=0)
    cache_path: Optional[str] = param(None, "response cache (None: <run_dir>/cache/teacher.jsonl)")
    price_per_1m_prompt: Optional[float] = param(None, "USD per million prompt tokens, for the cost estimate",
                                                 ge=0)
    price_per_1m_completion: Optional[float] = param(None, "USD per million completion tokens", ge=0)


class Seeds(Group):
    """The seed questions (steps augment and synthesize)."""
    benchmarks: list[str] = param(["gsm8k:train", "math:train_offline"],
                                  "registry 'name:split' (with the hub, 'math:train' is the real split)",
                                  flat="seed_benchmarks")
    per_benchmark: Optional[int] = param(4, "a seeded sample of each, None for all", flat="seeds_per_benchmark",
                                         ge=1)


class Sandbox(Group):
    """Where code runs (steps synthesize and evaluate)."""
    prefix: ClassVar[str] = "exec_"
    workers: Optional[int] = param(None, "sandbox workers; None: one per core", ge=1)
    timeout: float = param(10.0, "seconds per code block", gt=0)
    memory_mb: int = param(1024, "memory per code block, MiB", ge=16)


class Training(Group):
    """Supervised fine-tuning (steps stage1 and stage2)."""
    finetune: Literal["full", "lora", "qlora"] = param("full", "full | lora | qlora (qlora: slow on CPU, "
                                                               "bitsandbytes NF4)")
    epochs: float = param(3.0, "passes over the data", ge=0)
    max_steps: int = param(-1, "> 0 overrides epochs", ge=-1)
    learning_rate: float = param(2e-5, "peak learning rate", gt=0)
    lr_scheduler: str = param("linear", "transformers scheduler name (linear, cosine, constant, ...)")
    warmup_ratio: float = param(0.03, "share of the steps spent warming up", ge=0, lt=1)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0)
    global_batch_size: int = param(128, "per_device_batch_size x accumulation x processes; the accumulation "
                                        "is computed", ge=1)
    per_device_batch_size: int = param(1, "rows (packed rows when packing) per device and step", ge=1)
    max_length: int = param(2048, "tokens; longer rows are dropped, never truncated", ge=1)
    packing: Optional[bool] = param(None, "True / False; None: per device (mumath.sft.AUTO_PACKING: packed)")
    group_by_length: bool = param(True, "padded batches: draw batches of similar lengths (less padding)")
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass (less memory)")
    precision: Literal["auto", "bf16", "bf16-weights", "fp16", "fp32"] = param(
        "auto", "auto: bf16 where the device has native bf16 (else fp16 on a GPU, fp32 on CPU); bf16-weights: "
                "weights, gradients and optimizer state in bf16")
    attn_implementation: str = param("auto", "auto: flash_attention_2 on a GPU when installed, else sdpa")
    lora_r: int = param(16, "LoRA rank", ge=1)
    lora_alpha: int = param(32, "LoRA scaling numerator", ge=1)
    lora_dropout: float = param(0.05, "LoRA dropout", ge=0, lt=1)
    lora_target_modules: Optional[list[str]] = param(None, "None: every linear layer")
    save_steps: int = param(50, "checkpoint every N steps; the same command resumes from the last one", ge=1)
    save_total_limit: Optional[int] = param(2, "checkpoints kept (None: all)", ge=1)
    max_rows: Optional[int] = param(None, "train on the first N rows only (quick runs); None: all", ge=1)
    data_fraction: float = param(1.0, "train on this share of the rows: a seeded subset, nested across shares",
                                 gt=0, le=1)
    report_to: Union[str, list[str]] = param("tensorboard", "tensorboard (event files in <run_dir>/<stage>/"
                                                            "tensorboard) | wandb | trackio | none, or a list")
    num_processes: int = param(1, "> 1: accelerate launch (NCCL on GPUs, gloo on CPU)", ge=1)
    accelerate_config: Optional[str] = param(None, "e.g. 'configs/accelerate/zero3.yaml' or "
                                                   "'configs/accelerate/fsdp2.yaml'")


class Hub(Group):
    """Uploading a step's result to the Hugging Face hub (token from HF_TOKEN): filter, stage1, stage2."""
    prefix: ClassVar[str] = "hub_"
    push: bool = param(False, "upload the result with its card (README.md) to hub_repo_id", flat="push_to_hub")
    repo_id: Optional[str] = param(None, "'<user or org>/<name>' (needed with push_to_hub)")
    private: bool = param(True, "create the hub repository private")


class Evaluation(Concurrency):
    """What a model is evaluated on and how (every evaluate step and variant)."""
    benchmarks: list[str] = param(["gsm8k"], "registry names, 'name:split' for another split", min_length=1)
    split: str = param("test", "split of a benchmark named without one")
    limit: Optional[int] = param(8, "problems per benchmark (a seeded sample), None for all", ge=1)
    modes: list[Literal["tir", "cot"]] = param(["tir", "cot"], "tir (tool-integrated) and/or cot", min_length=1)
    few_shot: int = param(0, "worked examples in the prompt", ge=0)
    max_rounds: int = param(4, "code executions per trajectory at most", ge=1)
    chunk_size: int = param(256, "trajectories in flight at most (each is written as soon as it finishes)",
                            ge=1)
    n_samples: int = param(1, "> 1 with temperature > 0 gives maj@k", ge=1)
    carry_state: bool = param(False, "True: later code blocks see earlier blocks' variables")
    generation: Generation = Generation()


# ----------------------------------------------------------------------------------- step parts


class Step(Settings):
    run_dir: str = param(RUN_DIR_DEFAULT, "the run folder (set by the runner; relative: under the project)")


class Variant(Settings):
    step_name: Optional[str] = param(None, "set by the runner: the step, or a variant '<step>.<name>' (its "
                                           "output folder)")


class Seeded(Settings):
    seed: int = param(0, "random seed (samples, sampling, training)", ge=0)


class DataDir(Settings):
    data_dir: Optional[str] = param(None, "local data folder; None: $MUMATH_DATA_DIR, else the shipped copy "
                                          "or the hub")


class PromptDir(Settings):
    prompt_dir: Optional[str] = param(None, "a folder with your own prompt templates (see docs)")


class PromptFormat(Settings):
    prompt_format: Literal["chat", "mumath"] = param(
        "chat", "chat (system + template + the model's chat template) | mumath (the official <|user|> format); "
                "training and evaluation must agree")


class ExtraBenchmarks(Settings):
    extra_benchmarks: dict[str, dict] = param({}, "your own benchmarks: name -> registry entry")


# ---------------------------------------------------------------------------------------- steps

AugmentMethod = Literal["rephrase", "alter", "fobar", "bf_trans"]


class AugmentConfig(Seeded, PromptDir, DataDir, Step):
    """Step 1: new questions from the seeds."""
    seeds: Seeds = Seeds()
    methods: dict[AugmentMethod, NonNegative] = param({"rephrase": 1, "alter": 1, "fobar": 1, "bf_trans": 1},
                                                      "samples per seed and method")
    generation: Generation = Generation()
    teacher: Teacher = Teacher()


class SynthesizeConfig(Seeded, PromptDir, DataDir, Step):
    """Step 2: CoT and code-nested solutions."""
    questions_file: Optional[str] = param(None, "default <run_dir>/augment/questions.jsonl (when it exists)")
    include_seeds: bool = param(True, "also solve the seed questions themselves")
    seeds: Seeds = Seeds()
    stages: dict[Literal["cot", "tir"], NonNegative] = param(
        {"cot": 1, "tir": 1}, "samples per question for each stage (reference: one per question)", min_length=1)
    solution_source: Literal["teacher", "reference", "both", "corpus"] = param(
        "teacher", "'teacher', 'reference' (the seeds' own rationales), 'both' or 'corpus'")
    corpora: list[str] = param([], "solution_source 'corpus': names in mumath/corpora.yaml or extra_corpora")
    extra_corpora: dict[str, dict] = param({}, "your own corpus entries (same keys as mumath/corpora.yaml)")
    corpus_limit: Optional[int] = param(None, "first rows of each corpus (None: all)", ge=1)
    corpus_reexecute: Literal["no", "check", "replace"] = param(
        "no", "'no', 'check' (drop rows whose outputs differ) or 'replace'")
    corpus_carry_state: bool = param(False, "re-execution: earlier blocks of a solution run before each block")
    reference_blocks: Literal["step", "solution"] = param(
        "step", "reference code-nested solutions: a block per 'step' or per 'solution'")
    max_rounds: int = param(3, "code executions per solution at most", ge=1)
    few_shot: int = param(0, "worked examples in the prompt", ge=0)
    generation: Generation = Generation()
    sandbox: Sandbox = Sandbox()
    teacher: Teacher = Teacher()


class FilterSettings(Settings):
    """The filter's rules (`mumath.filter.FilterConfig` adds its internal knobs)."""
    max_tokens: Optional[int] = param(2048, "length limit in tokens, chat template included (None: no limit)",
                                      ge=1)
    max_rounds: Optional[int] = param(4, "code-nested: at most this many executions (None: no limit)", ge=1)
    require_prefix_cot: bool = param(True, "code-nested: reasoning in words before the first code block")
    min_prefix_words: int = param(8, "words that count as prefix reasoning", ge=0)
    min_votes: int = param(2, "pseudo answer: at least this many agreeing samples ...", ge=1)
    min_share: float = param(0.5, "... and at least this share of the question's votes", ge=0, le=1)
    dedup_threshold: float = param(0.85, "near-duplicate: MinHash LSH Jaccard over word 5-grams", gt=0, le=1)
    num_perm: int = param(128, "MinHash permutations", ge=2)
    max_per_question: Optional[int] = param(4, "solutions kept per question and stage (None: no cap)", ge=1)
    ngram: int = param(13, "decontamination word n-gram (13: Qwen2-Math; 10: DeepSeekMath)", ge=1)
    bag_jaccard: Optional[float] = param(0.7, "word-order-free decontamination: content-word Jaccard (None: off)",
                                         gt=0, le=1)
    keep_overlapping_with: list[str] = param([], "benchmarks whose overlapping rows are kept and reported, "
                                                 "not dropped")


class FilterStepConfig(FilterSettings, ExtraBenchmarks, DataDir, Step):
    """Step 3: the synthesized solutions -> the training sets."""
    synth_dir: Optional[str] = param(None, "default <run_dir>/synthesize")
    training_tokenizer: str = param("embedded", "the student whose tokenizer counts lengths (embedded, folder, "
                                                "hub id)")
    decontaminate_benchmarks: Optional[list[str]] = param(
        None, "None: every registered benchmark with a test split; or a list of names")
    hub: Hub = Hub()


class StageInputs(Settings):
    init_model: Optional[str] = param(None, "'embedded', a folder or a hub id; None: <run_dir>/stage1/final")
    data: Optional[str] = param(None, "chat-format JSONL; None: <run_dir>/filter/<stage>.jsonl")
    mode: Literal["cot", "tir"] = param("cot", "prompt format trained here, and evaluated in")


class StageConfig(Seeded, PromptFormat, PromptDir, StageInputs, Variant, Step):
    """Steps 4 and 5: one SFT stage (they differ only in their defaults, `STEPS`); `mumath.sft.TrainConfig`
    is the same parameters, flattened, plus the output folder."""
    training: Training = Training()
    hub: Hub = Hub()


class EvaluateConfig(Seeded, PromptFormat, PromptDir, ExtraBenchmarks, DataDir, Engine, Variant, Step):
    """Step 6: tool-integrated (and CoT) evaluation of one model."""
    context_length: Optional[int] = param(None, "served model's context in tokens (clamps max_tokens); None: "
                                                "asked from the server", ge=1)
    evaluation: Evaluation = Evaluation()
    sandbox: Sandbox = Sandbox()


class AnalysisConfig(Step):
    """Step 7: figures and report from run outputs."""
    runs: list[str] = param([], "run folders to analyse and compare (empty: this run, run_dir)")
    out_dir: Optional[str] = param(None, "None: <run_dir>/analysis")
    failing_examples: int = param(3, "failing trajectories shown per benchmark and mode", ge=0)
    browser_limit: Optional[int] = param(200, "trajectories per source, model, benchmark and mode in browser.html "
                                              "(None: all; 0: no page)", ge=0)


@dataclass(frozen=True)
class StepSchema:
    config: type
    defaults: dict = field(default_factory=dict)  # where this step's defaults differ from the declarations


TEACHER_SAMPLING = {"temperature": 0.7, "top_p": 0.95}
STEPS = {
    "augment": StepSchema(AugmentConfig, {"generation": dict(TEACHER_SAMPLING, max_new_tokens=192)}),
    "synthesize": StepSchema(SynthesizeConfig, {"generation": dict(TEACHER_SAMPLING, max_new_tokens=384),
                                                "sandbox": {"workers": 2}}),
    "filter": StepSchema(FilterStepConfig),
    "stage1": StepSchema(StageConfig, {"step_name": "stage1", "init_model": "embedded", "mode": "cot"}),
    "stage2": StepSchema(StageConfig, {"step_name": "stage2", "mode": "tir"}),
    "evaluate": StepSchema(EvaluateConfig, {"step_name": "evaluate", "evaluation": {"batch_size": 32}}),
    "analysis": StepSchema(AnalysisConfig),
}
# Top-level keys of a params file: each reaches every step of the file whose configuration has it.
SHARED = ("seed", "data_dir", "prompt_dir", "prompt_format", "extra_benchmarks", "teacher", "seeds", "sandbox", "training",
          "evaluation")


# ------------------------------------------------------------------------------------ resolving


class SchemaError(ValueError):
    """A value the schema refuses; `key` is its dotted path in the params file."""

    def __init__(self, key, message):
        super().__init__(f"parameter '{key}': {message}")
        self.key = key


def is_group(annotation):
    return isinstance(annotation, type) and issubclass(annotation, Group)


def merge(model, base, update):
    """`update` over `base` for a settings class: a group set in part keeps its other values; any other value
    (a mapping like `methods` included) is replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        info = model.model_fields.get(key)
        if info is not None and is_group(info.annotation) and isinstance(value, dict):
            merged[key] = merge(info.annotation, merged.get(key) or {}, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def step_defaults(step):
    """Every parameter of a step at its default for this step, as a nested dict."""
    schema = STEPS[step]
    return merge(schema.config, schema.config().model_dump(), schema.defaults)


def declared_names(model, path=()):
    """Dotted paths of every parameter of a settings class (groups expanded)."""
    names = []
    for name, info in model.model_fields.items():
        names += declared_names(info.annotation, path + (name,)) if is_group(info.annotation) else \
            [".".join(path + (name,))]
    return names


def check_names(values, model, where, runner_fields_ok=False):
    """Unknown names, and a value where a group is expected, fail with their dotted path."""
    if not isinstance(values, dict):
        raise SchemaError(where, f"should be a mapping of parameters, got {type(values).__name__}")
    for key, value in values.items():
        info = model.model_fields.get(key)
        here = f"{where}.{key}" if where else key
        if info is None or (key in RUNNER_FIELDS and not runner_fields_ok):
            known = sorted(set(model.model_fields) - set(RUNNER_FIELDS))
            raise SchemaError(here, f"unknown; {model.__name__} declares {known}")
        if is_group(info.annotation):
            check_names(value, info.annotation, here)


def resolve(step, shared=None, overrides=None, where=None, runner_fields_ok=False):
    """The step's configuration: declared defaults < the step's defaults < shared settings < its own entries.

    `step` is a recipe step ('stage2'); errors name the dotted key as written in the file (`where` prefixes
    the step's own entries, e.g. 'steps.stage2.only'). `run_dir` and `step_name` come from the runner (or
    a notebook's cell), never from a params file."""
    schema = STEPS[step]
    where = where or f"steps.{step}"
    shared = {key: value for key, value in (shared or {}).items() if key in schema.config.model_fields}
    check_names(shared, schema.config, "")
    check_names(overrides or {}, schema.config, where, runner_fields_ok)
    values = merge(schema.config, merge(schema.config, step_defaults(step), shared), overrides or {})
    try:
        return schema.config.model_validate(values)
    except ValidationError as error:
        problem = error.errors()[0]
        path = parameter_path(schema.config, problem["loc"])
        loc = ".".join(path)
        mine = _lookup(overrides or {}, path)
        key = f"{where}.{loc}" if mine else loc
        raise SchemaError(key, f"{problem['msg']}, got {problem.get('input')!r}") from None


def parameter_path(model, loc):
    """The parameter an error location points into: ('evaluation', 'modes', 0) -> ('evaluation', 'modes')."""
    path = []
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            break
        path.append(part)
        if not is_group(info.annotation):
            break
        model = info.annotation
    return tuple(path)


def _lookup(values, loc):
    """Whether the step's own entries hold the value at `loc` (else it came from the top level)."""
    node = values
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# ------------------------------------------------------------------------- the notebooks' cells


@dataclass(frozen=True)
class FlatParam:
    name: str          # in the notebook's cell: run_dir, teacher_model, exec_timeout, ...
    path: tuple        # in the configuration: ('teacher', 'model')
    doc: str
    group: str = None  # the group it belongs to, for the cell's headings


def flat_params(model, path=(), prefix="", group=None):
    """The notebook's flat names for every parameter of a settings class, in declaration order."""
    out = []
    for name, info in model.model_fields.items():
        if is_group(info.annotation):
            sub = info.annotation
            out += flat_params(sub, path + (name,), prefix + sub.prefix, group or name)
        else:
            flat = (info.json_schema_extra or {}).get("flat") or prefix + name
            out.append(FlatParam(flat, path + (name,), info.description or "", group))
    return out


def _get(values, path):
    for part in path:
        values = values[part]
    return values


def to_flat(step, config):
    """{flat name: value} of a configuration (what the runner hands papermill)."""
    values = config.model_dump() if isinstance(config, BaseModel) else config
    return {p.name: _get(values, p.path) for p in flat_params(STEPS[step].config)}


def from_flat(step, namespace):
    """The nested values of a step from a namespace holding its flat names (a notebook's globals)."""
    values = {}
    for p in flat_params(STEPS[step].config):
        if p.name in namespace:
            node = values
            for part in p.path[:-1]:
                node = node.setdefault(part, {})
            node[p.path[-1]] = namespace[p.name]
    return values


def from_notebook(step, namespace):
    """The configuration of `step` (a step or a variant's key, e.g. 'stage2.only') from the variables of its
    notebook's parameters cell (papermill's or the reader's edits), validated like a params file."""
    step = step.split(".")[0]  # a variant's key: its step's configuration
    try:
        return resolve(step, overrides=from_flat(step, namespace), where="notebook", runner_fields_ok=True)
    except SchemaError as error:  # name the cell's variable: evaluation.limit -> limit
        names = {".".join(("notebook",) + p.path): p.name for p in flat_params(STEPS[step].config)}
        raise SchemaError(names.get(error.key, error.key), str(error).split(": ", 1)[1]) from None


def parameters_cell(step):
    """The source of a notebook's `parameters` cell, generated from the schema (with each doc line)."""
    defaults = step_defaults(step)
    lines = ["# Parameters: generated from mumath/params.py (`python -m mumath.param_cells`); papermill "
             "overrides them,", "# a params file sets them (docs/params.md)."]
    group = None
    for p in flat_params(STEPS[step].config):
        if p.group != group and p.group is not None:
            lines.append(f"# {p.group}: {GROUP_TITLES.get(p.group, p.group)}")
        group = p.group
        assignment = f"{p.name} = {_literal(_get(defaults, p.path))}"
        lines.append(f"{assignment:<38}  # {p.doc}" if p.doc else assignment)
    return "\n".join(lines)


GROUP_TITLES = {"teacher": "the model that writes questions and solutions", "seeds": "the seed questions",
                "generation": "decoding", "sandbox": "where code runs", "training": "fine-tuning",
                "evaluation": "what the model is evaluated on, and how"}


def _literal(value):
    """Python source for a default, strings in double quotes (the cells' style)."""
    if isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, list):
        text = "[" + ", ".join(_literal(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{_literal(key)}: {_literal(item)}" for key, item in value.items()) + "}"
    else:
        text = repr(value)
    assert ast.literal_eval(text) == value, text  # the cell must stay literals papermill can read
    return text
