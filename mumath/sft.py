"""Supervised fine-tuning, steps 4 (stage 1: CoT) and 5 (stage 2: code-nested), with TRL's `SFTTrainer`.

One function per concern: the configuration (`TrainConfig`, validated), the model (full / LoRA / QLoRA),
the trainer (packing or padding, checkpoints, logs), the final folder (plain safetensors, LoRA merged,
tokenizer and chat template: what evaluation and vLLM load), and the launcher (in-process, or
`accelerate launch` for several processes: DeepSpeed ZeRO-3, FSDP2, or gloo on CPU).

Examples are pre-tokenized with their loss mask (`mumath.sft_examples`); TRL keeps a given `labels` column as is,
through packing too. Stage 2 starts from stage 1's final folder, which is always a merged, plain model:
with LoRA the stage-1 adapter is merged first and stage 2 trains a new adapter.
"""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from .params import PromptDir, PromptFormat, Seeded, StageInputs, Training
from .records import append_jsonl, read_jsonl, write_json, write_jsonl

# Packing (best-fit decreasing, padding-free) per device. Measured on CPU (benchmarks/results/train-cpu.json):
# one packed row of 1024 tokens per step beats padded batches of 4 (no padding; sdpa attends the row as a
# whole, which costs little next to the MLPs at this length), so keep per_device_batch_size 1 when packing
# there. On a GPU, flash attention attends each packed sequence on its own (varlen); not measured here.
AUTO_PACKING = {"cpu": True, "cuda": True}
# Dense bf16/fp16 tensor-core peak, FLOP/s, for MFU (first matching name wins).
PEAK_FLOPS = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12), ("A10", 125e12),
              ("L4", 121e12), ("V100", 125e12), ("T4", 65e12)]
CONFIG_FILE, FINAL, STATS, LOG = "train_config.json", "final", "stats.json", "log.jsonl"
TENSORBOARD = "tensorboard"  # <stage>/tensorboard/: the event files (`tensorboard --logdir outputs/<run>`)
REPORT_TO = ("tensorboard", "wandb", "trackio", "none")


class TrainConfigError(ValueError):
    pass


class TrainConfig(Training, StageInputs, PromptFormat, PromptDir, Seeded):
    """One stage's training job: the parameters of `mumath.params` (the `training` group and the stage's
    inputs, declared there once) plus its output folder. Invalid values raise TrainConfigError."""
    output_dir: str

    def __init__(self, **values):
        unknown = set(values) - set(type(self).model_fields)
        if unknown:
            raise TrainConfigError(f"unknown training parameter(s) {sorted(unknown)}")
        try:
            super().__init__(**values)
        except ValidationError as error:
            problem = error.errors()[0]
            name = ".".join(str(part) for part in problem["loc"])
            raise TrainConfigError(f"parameter '{name}': {problem['msg']}, got {problem.get('input')!r}") from None

    def validate(self):
        """What one field's range cannot say."""
        if self.max_steps <= 0 and self.epochs <= 0:
            raise TrainConfigError("set 'epochs' > 0 or 'max_steps' > 0")
        if self.data is None:
            raise TrainConfigError("parameter 'data' is not set")
        report_targets(self.report_to)
        return self

    @classmethod
    def from_dict(cls, data):
        return cls(**data).validate()


def report_targets(report_to):
    """`report_to` (a name or a list) -> the list of trackers; 'none' alone (or an empty list) is none."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    unknown = [name for name in names if name not in REPORT_TO]
    if unknown:
        raise TrainConfigError(f"parameter 'report_to' names {unknown}; each one of {REPORT_TO}")
    if "none" in names and len(names) > 1:
        raise TrainConfigError(f"parameter 'report_to' is {names}: 'none' cannot be combined with a tracker")
    return [name for name in names if name != "none"]


# ---------------------------------------------------------------- device, batch, precision

def device_kind():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation_steps(global_batch_size, per_device_batch_size, processes):
    """Gradient accumulation that makes the global batch; it must divide evenly (no silent rounding)."""
    per_step = per_device_batch_size * processes
    if global_batch_size % per_step:
        raise TrainConfigError(
            f"parameter 'global_batch_size' ({global_batch_size}) is not a multiple of per_device_batch_size "
            f"({per_device_batch_size}) x processes ({processes}) = {per_step}")
    return global_batch_size // per_step


PRECISIONS = ("auto", "bf16", "bf16-weights", "fp16", "fp32")


def cpu_has_native_bf16():
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX-BF16): there bf16 halves the bytes and
    the instructions per multiply-add; without it torch emulates bf16 and it is slower than fp32.

    torch's own CPU feature probe (cpuinfo) first; the kernel's /proc/cpuinfo flags where torch has none.
    """
    import torch

    get_capabilities = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get_capabilities is not None:
        try:
            capabilities = get_capabilities()
            return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
        except (RuntimeError, AttributeError):
            pass
    return bool(cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def cpuinfo_flags(path="/proc/cpuinfo"):
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cuda_has_native_bf16():
    """Native bf16 only (Ampere and newer): a T4 emulates bf16 and runs it several times slower than fp16."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no `including_emulation` and answers for native support
        return torch.cuda.is_bf16_supported()


# What `precision: auto` picks on a CPU with native bf16. Measured (benchmarks/results/train-cpu-precision.json,
# docs/cpu-speed.md): autocast 1.50x fp32's tokens/s with its loss curve within 0.025 nats of fp32's;
# bf16 weights 2.33x but 0.10 nats off at one step (updates rounded to 8 bits): autocast, by accuracy.
CPU_BF16 = "bf16"


def resolve_precision(precision, device):
    """`auto`: bf16 on GPUs with native bf16, fp16 on older GPUs; on CPUs with native bf16 `CPU_BF16`,
    fp32 on the others. Any other value is kept as asked."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if cuda_has_native_bf16() else "fp16"
    return CPU_BF16 if cpu_has_native_bf16() else "fp32"


def uses_bf16(precision):
    return precision in ("bf16", "bf16-weights")


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_every_core(device):
    """On CPU, one torch thread per core this process may use (divided among `accelerate launch` ranks via
    OMP_NUM_THREADS, which wins when set). Returns the thread count."""
    import torch

    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(available_cores())
    return torch.get_num_threads()


def resolve_attention(attn_implementation, device):
    if attn_implementation != "auto":
        return attn_implementation
    if device == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def resolve_packing(packing, device):
    return AUTO_PACKING[device] if packing is None else bool(packing)


# ---------------------------------------------------------------- model

def lora_config(config):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules or "all-linear", bias="none",
                      task_type="CAUSAL_LM")


def qlora_quantization(compute_dtype="bf16"):
    """The QLoRA recipe: 4-bit NF4 weights, double quantization, bf16 compute (fp16 on GPUs without bf16)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}
                                                             .get(compute_dtype, "bfloat16")))


QLORA_CPU_NOTE = ("[train] finetune 'qlora' on CPU: bitsandbytes runs NF4 there through its slow CPU path "
                  "(seconds per step even for a tiny model); use it to check a recipe, train on a CUDA GPU")


def qlora_device_note(device):
    """QLoRA runs everywhere bitsandbytes 0.50 does (CUDA, and NF4 on CPU); on CPU it is slow, say so."""
    return QLORA_CPU_NOTE if device != "cuda" else None


def torch_dtype(precision):
    import torch

    return {"bf16": torch.bfloat16, "bf16-weights": torch.bfloat16, "fp16": torch.float16,
            "fp32": torch.float32}[precision]


def load_base_model(config, path, precision, attention):
    """The model to train: plain (full / LoRA) or 4-bit and prepared for k-bit training (QLoRA)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attention}
    if config.finetune == "qlora":
        from peft import prepare_model_for_kbit_training

        kwargs["quantization_config"] = qlora_quantization(precision)
        kwargs["dtype"] = torch_dtype(precision)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        # SFTTrainer does not do this for us: casts norms to fp32, enables input grads (+ checkpointing).
        with peft_wrapping():
            return prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    # Full and LoRA train fp32 master weights under mixed precision (the Trainer autocasts to bf16), except
    # under bf16-weights, where the weights themselves are bf16 (no casts, half the bytes; coarser updates).
    if precision == "bf16-weights":
        dtype = "bf16"
    elif config.finetune == "full" or precision == "fp16":
        dtype = "fp32"
    else:
        dtype = precision
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), **kwargs)


# ---------------------------------------------------------------- provenance

def fingerprint(config, data_path, init_path):
    """sha256 over the configuration (minus bookkeeping) and the data and initial model it reads."""
    from .manifest import sha256_path

    settings = {key: value for key, value in config.model_dump().items()  # not where, nor how often it saves
                if key not in ("output_dir", "save_steps", "save_total_limit", "num_processes", "accelerate_config",
                               "report_to")}
    blob = {"config": settings, "data": sha256_path(data_path),
            "init_model": sha256_path(init_path) if Path(init_path).exists() else str(init_path)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def latest_checkpoint(folder):
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a checkpoint cut by a
    kill while saving has none and is skipped."""
    checkpoints = sorted((p for p in Path(folder).glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                         key=lambda p: int(p.name.split("-")[-1]))
    return checkpoints[-1] if checkpoints else None


def prepare_output(out, print_fn=print, digest=None):
    """Keep checkpoints only when they come from this very configuration and data; else start clean."""
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / CONFIG_FILE
    previous = json.loads(config_file.read_text()).get("fingerprint") if config_file.exists() else None
    if previous is not None and previous != digest:
        print_fn(f"[train] {out}: configuration, data or initial model changed; discarding old checkpoints")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / TENSORBOARD, ignore_errors=True)  # curves of another configuration would mix in
        (out / LOG).unlink(missing_ok=True)


# ---------------------------------------------------------------- logging and counting

def make_callbacks(log_path, counter):
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """Loss and learning rate per step -> log.jsonl (rank 0); a resume drops the lines it will redo."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and log_path.exists():
                write_jsonl(log_path, [record for record in read_jsonl(log_path)
                                       if record.get("step", 0) <= state.global_step])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, **logs, "time": time.time()}
                append_jsonl(log_path, [record])

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            counter.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            counter.step_seconds += time.perf_counter() - counter.step_started

    return [JsonlLog(), Timing()]


def tensorboard_callback(folder):
    """transformers' TensorBoard callback, writing its event files to `folder` (rank 0 only, on first log).

    Set here rather than through `report_to`, which would put them under checkpoints/runs/<date_host>/."""
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(folder)
    return callback


class Throughput:
    """Tokens per second of the steps since the last log line (this process's batches: per process).

    Tokens are counted as the training step receives its batch, not in the collator: the data loader
    collates a batch ahead, which would credit a step's tokens to the one before."""

    def __init__(self, counter):
        self.counter, self.tokens, self.seconds = counter, 0, 0.0

    def add(self, inputs):
        mask = inputs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()

    def since_last(self):
        seconds = self.counter.step_seconds - self.seconds
        tokens, self.tokens, self.seconds = self.tokens, 0, self.counter.step_seconds
        return round(tokens / seconds, 1) if seconds > 0 and tokens else None


class CountingCollator:
    """Wraps the trainer's collator: counts real tokens and padded positions of every batch it builds."""

    def __init__(self, collator, pad_token_id):
        self.collator, self.pad_token_id = collator, pad_token_id
        self.tokens = self.positions = 0
        self.step_seconds, self.step_started = 0.0, 0.0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.positions += batch["input_ids"].numel()
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())
        else:  # padding-free: one packed row, every position is a real token
            self.tokens += batch["input_ids"].numel()
        return batch


def reduce_counts(counter):
    """Sum the per-process counts over all processes (tokens/s of the whole job)."""
    import torch
    import torch.distributed as dist

    counts = torch.tensor([counter.tokens, counter.positions], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        counts = counts.to("cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(counts)
    return int(counts[0]), int(counts[1])


def parameter_count(parameter):
    """Elements of one parameter in the whole model, not in this process's shard.

    ZeRO-3 leaves an empty local tensor and keeps the full size in `ds_numel`; FSDP2's DTensors report the
    global shape; bitsandbytes' 4-bit weights pack two values per byte and keep the shape in `quant_state`.
    """
    quant_state = getattr(parameter, "quant_state", None)  # before ds_numel: ZeRO-3 counts packed bytes
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        import math

        return math.prod(quant_state.shape)
    if hasattr(parameter, "ds_numel"):
        return int(parameter.ds_numel)
    return parameter.numel()


def parameter_counts(model):
    """(trainable, total) parameters of the whole model, however it is sharded or quantized."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter_count(parameter)
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total


def peak_memory_gb(device):
    import resource

    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB -> GiB (Linux)


def gpu_name(device):
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else None


def peak_flops(name):
    """The dense bf16/fp16 peak of a GPU named like 'NVIDIA H100 80GB HBM3' (None when not in PEAK_FLOPS)."""
    return next((flops for key, flops in PEAK_FLOPS if key in str(name or "")), None)


def mfu(params, tokens_per_second, device):
    """Model FLOPs utilization: 6 x parameters x tokens/s over the GPU's dense peak (attention not counted).

    `params` counts the whole model (`parameter_counts`) and tokens/s the whole job, so the peak is that of
    every process's GPU."""
    peak = peak_flops(gpu_name(device)) if device == "cuda" else None
    if peak is None:
        return None
    return round(6 * params * tokens_per_second / (peak * world_size()), 4)



# ---------------------------------------------------------------- known-harmless library messages

class _DropMessage(logging.Filter):
    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        return not str(record.msg).startswith(self.prefix)


# bitsandbytes 0.50 on a CPU with avx512_bf16 tries the optional `kernels` package when it is imported (by
# peft, by trl) and logs this when it is absent; its built-in NF4 path is used instead, the one every CPU run
# takes. Only this message of that logger is dropped.
BITSANDBYTES_NO_KERNELS = ("bitsandbytes.backends.cpu.ops",
                           "Failed to load CPU gemm_4bit_forward from kernels-community")


def drop_known_harmless_messages():
    """Install (once) the filter for `BITSANDBYTES_NO_KERNELS`; call it before trl / peft are imported."""
    logger = logging.getLogger(BITSANDBYTES_NO_KERNELS[0])
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(BITSANDBYTES_NO_KERNELS[1]))


@contextmanager
def peft_wrapping():
    """peft 0.21 reads the model's `is_gradient_checkpointing` when it wraps a model (SFTTrainer with a LoRA
    config, `PeftModel.from_pretrained`) and calls `gradient_checkpointing_enable` when it prepares a 4-bit
    model, names transformers 5.23 deprecates with a FutureWarning. Silenced only there: the names are peft's,
    and they still do what peft means."""
    with warnings.catch_warnings():
        for name in ("is_gradient_checkpointing", "gradient_checkpointing_enable"):
            warnings.filterwarnings("ignore", message=f"`{name}` is deprecated", category=FutureWarning)
        yield


drop_known_harmless_messages()


# ---------------------------------------------------------------- training

def sft_arguments(config, out, settings):
    from trl import SFTConfig

    packing, precision = settings["packing"], settings["precision"]
    return SFTConfig(
        output_dir=str(Path(out) / "checkpoints"), num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
        max_length=config.max_length, packing=packing, packing_strategy="bfd", padding_free=packing,
        train_sampling_strategy="group_by_length" if settings["group_by_length"] else "random",
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5's name for it
        bf16=uses_bf16(precision), fp16=precision == "fp16", use_cpu=settings["device"] == "cpu",
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        logging_steps=1, logging_first_step=True, seed=config.seed, data_seed=config.seed,
        # TensorBoard is added as a callback (event files under the stage folder); wandb and trackio read
        # their project and key from the environment (WANDB_PROJECT, WANDB_API_KEY, ...), never from here.
        report_to=[name for name in report_targets(config.report_to) if name != "tensorboard"],
        run_name=f"{Path(out).parent.name}/{Path(out).name}",
        ddp_find_unused_parameters=False if settings["processes"] > 1 else None)


def trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class MuMathSFTTrainer(SFTTrainer):
        """SFTTrainer, with the model's own loss where TRL's fused LM head has no fast kernel.

        TRL 1.16 always computes the loss through a fused, chunked LM head (Triton on GPUs). Without Triton
        (CPU) it falls back to a tiled Python kernel over every position, which took two thirds of a step in a
        profile on the embedded model. There the model computes its own loss from `labels` (same value: sum
        over target tokens / `num_items_in_batch`); TRL's entropy and token-accuracy metrics are not logged.
        """

        throughput = None  # a Throughput, set by build_trainer: adds tokens/s to every log line

        def log(self, logs, start_time=None):
            if self.throughput is not None and "loss" in logs:
                tokens_per_second = self.throughput.since_last()
                if tokens_per_second is not None:
                    logs["tokens_per_second"] = tokens_per_second
            super().log(logs, start_time)

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.throughput is not None:
                self.throughput.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if inputs["input_ids"].device.type == "cuda":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return MuMathSFTTrainer


def build_trainer(config, examples, tokenizer, init_path, out, device=None):
    """The SFTTrainer for pre-tokenized examples, with a token-counting collator and the JSONL log.

    Returns (trainer, counter, settings); `benchmarks/train.py` builds its trainers here too.
    """
    from datasets import Dataset

    device = device or device_kind()
    settings = {"device": device, "processes": world_size(), "torch_threads": use_every_core(device),
                "precision": resolve_precision(config.precision, device),
                "packing": resolve_packing(config.packing, device),
                "attention": resolve_attention(config.attn_implementation, device)}
    settings["gradient_accumulation_steps"] = accumulation_steps(
        config.global_batch_size, config.per_device_batch_size, settings["processes"])
    settings["group_by_length"] = config.group_by_length and not settings["packing"]
    # Arguments before the model: under DeepSpeed ZeRO-3 they make from_pretrained load the weights sharded.
    args = sft_arguments(config, out, settings)
    model = load_base_model(config, init_path, settings["precision"], settings["attention"])
    if settings["group_by_length"]:
        examples = [dict(example, length=len(example["input_ids"])) for example in examples]
    dataset = Dataset.from_list(examples)
    with peft_wrapping():
        trainer = trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                  peft_config=lora_config(config) if config.finetune != "full" else None)
    counter = CountingCollator(trainer.data_collator, tokenizer.pad_token_id)
    trainer.data_collator = counter
    trainer.throughput = Throughput(counter)
    callbacks = make_callbacks(Path(out) / LOG, counter)
    if "tensorboard" in report_targets(config.report_to):
        callbacks.append(tensorboard_callback(Path(out) / TENSORBOARD))
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer, counter, settings


def train(config, print_fn=print):
    """Train one stage in this process (or as one rank of `accelerate launch`); returns its stats."""
    from .models import load_tokenizer, resolve_model_path
    from .records import write_json
    from .prompts import apply_prompt_format, format_prompt_dir
    from .sft_examples import build_examples, load_rows

    config.validate()
    device = device_kind()
    if config.finetune == "qlora" and qlora_device_note(device):
        print_fn(qlora_device_note(device))
    out = Path(config.output_dir)
    init_path = resolve_model_path(config.init_model)
    digest = fingerprint(config, config.data, init_path)
    final = out / FINAL
    done = final / "mumath_train.json"
    if done.exists() and (out / STATS).exists() and json.loads(done.read_text()).get("fingerprint") == digest:
        print_fn(f"[train] {final} was trained with this configuration and data; reusing it")
        return json.loads((out / STATS).read_text())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        prepare_output(out, print_fn, digest)
        write_json(out / CONFIG_FILE, {"fingerprint": digest, "config": config.model_dump(), "init_path": init_path})

    tokenizer = load_tokenizer(init_path)
    tokenizer.padding_side = "right"
    if config.prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        print_fn(f"[train] {init_path} has no chat template; using mumath.prompts.FALLBACK_CHAT_TEMPLATE")
    apply_prompt_format(tokenizer, config.prompt_format)  # saved with final/: evaluation formats the same way
    rows = load_rows(config.data)
    rows = rows[:config.max_rows] if config.max_rows else rows
    rows = data_subset(rows, config.data_fraction, config.seed)
    examples, data_stats = build_examples(rows, tokenizer, config.mode, config.max_length,
                                          format_prompt_dir(config.prompt_format, config.prompt_dir),
                                          source=str(config.data))
    if not examples:
        raise TrainConfigError(f"{config.data}: none of its {len(rows)} rows fits max_length {config.max_length}")
    trainer, counter, settings = build_trainer(config, examples, tokenizer, init_path, out, device)

    resume = latest_checkpoint(out / "checkpoints")
    if resume is not None:
        print_fn(f"[train] resuming from {resume}")
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    tokens, positions = reduce_counts(counter)

    save_final(trainer, config, init_path, tokenizer, final, digest, settings["precision"], rank0, print_fn)
    trainable, total_params = parameter_counts(trainer.model)
    tokens_per_second = tokens / counter.step_seconds if counter.step_seconds else 0.0
    stats = {
        "stage_dir": str(out), "init_model": str(config.init_model), "data": str(config.data),
        "finetune": config.finetune, "mode": config.mode, **settings,
        "global_batch_size": config.global_batch_size, "per_device_batch_size": config.per_device_batch_size,
        "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
        "resumed_from": resume.name if resume else None,
        "train_loss": result.training_loss, "final_loss": last_logged_loss(trainer.state.log_history),
        "data_fraction": config.data_fraction, "examples": data_stats.to_dict(), "tokens_trained": tokens, "positions": positions,
        "padding_share": round(1 - tokens / positions, 4) if positions else 0.0,
        "seconds": round(seconds, 1), "step_seconds": round(counter.step_seconds, 1),
        "tokens_per_second": round(tokens_per_second, 1), "peak_memory_gb": peak_memory_gb(device),
        "trainable_parameters": trainable, "parameters": total_params,
        "mfu": mfu(total_params, tokens_per_second, device), "gpu": gpu_name(device),
    }
    if rank0:
        write_json(out / STATS, stats)
    return stats


def data_subset(rows, fraction, seed):
    """`fraction` of the rows, in their file order: the first rows of one seeded permutation, so the 25 %
    subset lies inside the 50 % one (a data-scaling curve adds rows, it does not swap them)."""
    import random

    if fraction >= 1:
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[:max(1, round(fraction * len(rows)))])
    return [rows[index] for index in keep]


def last_logged_loss(history):
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses[-1] if losses else None


def save_final(trainer, config, init_path, tokenizer, final, digest, precision, rank0, print_fn=print):
    """<stage>/final: plain safetensors + tokenizer + chat template; a LoRA adapter is merged into its base.

    Every rank takes part in gathering the weights (ZeRO-3 / FSDP shards); the rest happens on rank 0 alone
    and ends with no collective call, so the other ranks never wait on rank 0's merge (a long merge, or one
    that fails, cannot leave them blocked at a barrier).
    """
    tmp = final.with_name(final.name + ".partial")
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a kill while saving
    adapter = final.parent / "adapter"
    # Collective: gathers ZeRO-3 / FSDP shards to rank 0, which writes them.
    trainer.save_model(str(tmp if config.finetune == "full" else adapter))
    if not rank0:
        return
    if config.finetune != "full":
        # Merge into the unquantized base (merging into 4-bit weights would round them again).
        dtype = torch_dtype(precision if config.finetune == "qlora" or uses_bf16(precision) else "fp32")
        merge_adapter(init_path, adapter, dtype, tmp)
    tokenizer.padding_side = "left"  # how evaluation loads it anyway; keeps the saved files identical
    tokenizer.save_pretrained(str(tmp))
    write_json(tmp / "mumath_train.json",
               {"fingerprint": digest, "init_model": str(config.init_model), "data": str(config.data),
                "finetune": config.finetune, "mode": config.mode, "prompt_format": config.prompt_format})
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print_fn(f"[train] wrote {final}")


def merge_adapter(init_path, adapter, dtype, out):
    """Base model + LoRA adapter -> one plain model in `out`, loaded whole in this process.

    Runs on one rank while the others may have left: the base must load as an ordinary model, outside
    DeepSpeed's sharded initialisation (which would turn the load into a broadcast the other ranks never join).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with outside_zero3_init():
        base = AutoModelForCausalLM.from_pretrained(init_path, dtype=dtype)
    with peft_wrapping():
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)


class outside_zero3_init:
    """Within: `from_pretrained` builds a whole model in this process, even while a ZeRO-3 Trainer lives.

    transformers consults one process-wide reference to the Trainer's DeepSpeed config and, under ZeRO-3,
    wraps every model construction in `deepspeed.zero.Init` (parameters partitioned over all ranks).
    """

    def __enter__(self):
        from transformers.integrations import deepspeed as hf_deepspeed

        self.saved = hf_deepspeed._hf_deepspeed_config_weak_ref
        hf_deepspeed._hf_deepspeed_config_weak_ref = None
        return self

    def __exit__(self, *exc):
        from transformers.integrations import deepspeed as hf_deepspeed

        hf_deepspeed._hf_deepspeed_config_weak_ref = self.saved
        return False


# ---------------------------------------------------------------- launching

def launch(config, num_processes=None, accelerate_config=None, print_fn=print):
    """Train in this process, or in `num_processes` ranks under `accelerate launch` (ZeRO-3, FSDP2, gloo);
    both default to the configuration's.

    The launched ranks run ``python -m mumath.sft <output_dir>/launch.json``; the stats come back from
    <output_dir>/stats.json.
    """
    config.validate()
    num_processes = num_processes or config.num_processes
    accelerate_config = accelerate_config or config.accelerate_config
    check_launch_mode(config, accelerate_config)
    if num_processes <= 1 and not accelerate_config:
        return train(config, print_fn)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "launch.json"
    write_json(spec, config.model_dump())
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        command += ["--config_file", str(accelerate_config)]
    if num_processes > 1:
        command += ["--num_processes", str(num_processes)]
        if not accelerate_config:
            command += ["--multi_gpu"]  # with use_cpu (no GPU) this is data parallel over gloo
    command += ["-m", "mumath.sft", str(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    if device_kind() == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, num_processes))))
    print_fn("[train] " + " ".join(command))
    returncode = run_process_group(command, env)
    if returncode != 0:
        raise RuntimeError(f"accelerate launch exited with {returncode} (command: {' '.join(command)})")
    return json.loads((out / STATS).read_text())


def check_launch_mode(config, accelerate_config):
    """Refuse, before anything starts, an accelerate config that is missing or a mode that is not supported
    (QLoRA under FSDP: its 4-bit weights need FSDP1's quant_storage handling)."""
    if not accelerate_config:
        return
    import yaml

    path = Path(accelerate_config)
    if not path.is_file():
        raise TrainConfigError(f"parameter 'accelerate_config': {path} does not exist (see configs/accelerate/)")
    distributed_type = (yaml.safe_load(path.read_text()) or {}).get("distributed_type")
    if config.finetune == "qlora" and distributed_type == "FSDP":
        raise TrainConfigError(f"parameter 'finetune' is 'qlora' and accelerate_config {path} is FSDP: not supported; "
                               "use configs/accelerate/zero3.yaml, or finetune 'lora'")


def run_process_group(command, env):
    """Run the launcher and its ranks as one process group; if this process is interrupted (Ctrl-C, a test's
    timeout), end the whole group so that no rank is left behind holding memory or a port."""
    import signal

    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        return process.wait()
    except BaseException:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the ranks get a moment to exit, then are killed
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        raise


def run_stage(run_dir, stage, data=None, init_model=None, step_name=None, push_to_hub=False, hub_repo_id=None,
              hub_private=True, **settings):
    """Step 4 or 5 of a run: <run_dir>/filter/<stage>.jsonl -> <run_dir>/<stage>/final (+ stats, log,
    TensorBoard events, model card README.md).

    `init_model` defaults to the embedded model for stage 1 and to <run_dir>/stage1/final for stage 2;
    `settings` are the rest of `TrainConfig` (`mumath.params.Training`, mode, seed, prompt_dir).
    With `push_to_hub`, final/ and its card go to the hub repository `hub_repo_id` (token from HF_TOKEN).
    """
    from .cards import CardError, push_stage, write_model_card

    if push_to_hub and (not hub_repo_id or str(hub_repo_id).count("/") != 1):
        raise CardError(f"parameter 'push_to_hub' is on and 'hub_repo_id' is {hub_repo_id!r}: set it to "
                        "'<user or org>/<name>'")
    from .manifest import record_inputs
    from .models import resolve_model_path

    run_dir = Path(run_dir)
    data = Path(data) if data else run_dir / "filter" / f"{stage}.jsonl"
    if init_model is None:
        init_model = "embedded" if stage == "stage1" else str(run_dir / "stage1" / FINAL)
        if stage != "stage1" and not Path(init_model).exists():
            raise TrainConfigError(f"parameter 'init_model' is empty and {init_model} does not exist: run stage1 "
                                   "first, or set init_model ('embedded', a folder or a hub id)")
    config = TrainConfig.from_dict(dict(settings, output_dir=str(run_dir / (step_name or stage)), data=str(data),
                                        init_model=init_model))
    init_path = resolve_model_path(init_model)
    record_inputs(run_dir, [data] + ([init_path] if Path(init_path).exists() else []))
    stats = launch(config)
    card = write_model_card(config.output_dir, run_dir)
    if push_to_hub:
        stats["hub_commit"] = push_stage(config.output_dir, hub_repo_id, hub_private)
        print(f"[train] pushed {config.output_dir}/final and {card.name} to {hub_repo_id}: {stats['hub_commit']}")
    return stats


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mumath.sft <launch.json>  (written by mumath.sft.launch)", file=sys.stderr)
        return 2
    config = TrainConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
