"""Steps 4-5 training: modes, final folder, logs, resume after a kill, two processes = one process."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mumath.sft import (QLORA_CPU_NOTE, TrainConfig, TrainConfigError, accumulation_steps, lora_config,
                        qlora_device_note, qlora_quantization, train)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory, data_dir):
    """16 GSM8K training rationales as CoT rows, a few with a (real-format) execution output."""
    folder = tmp_path_factory.mktemp("data")
    rows = []
    from mumath.records import read_jsonl

    for index, record in enumerate(read_jsonl(data_dir / "gsm8k" / "train.jsonl.gz")[:16]):
        body, answer = record["answer"].split("####")
        solution = body.strip() + f"\nThe answer is \\boxed{{{answer.strip()}}}."
        if index % 4 == 0:
            solution = f"Check:\n```python\nprint({answer.strip().replace(',', '')})\n```\n```output\n" \
                       f"{answer.strip().replace(',', '')}\n```\n" + solution
        rows.append({"id": f"gsm8k-{index}", "question": record["question"],
                     "messages": [{"role": "user", "content": record["question"]},
                                  {"role": "assistant", "content": solution}]})
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config_for(tmp_path, tiny_model, rows_file, **overrides):
    settings = dict(output_dir=str(tmp_path / "stage"), data=str(rows_file), init_model=str(tiny_model), mode="tir",
                    finetune="full", max_steps=3, learning_rate=1e-3, global_batch_size=4,
                    per_device_batch_size=2, max_length=512, save_steps=2, warmup_ratio=0.0, seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def read_log(stage_dir):
    return [json.loads(line) for line in (Path(stage_dir) / "log.jsonl").read_text().splitlines()]


class FakeCuda:
    """torch.cuda.is_bf16_supported as on a T4 (bf16 only emulated) or an A100 (native)."""

    def __init__(self, native):
        self.native, self.calls = native, []

    def __call__(self, including_emulation=True):
        self.calls.append(including_emulation)
        return self.native or including_emulation


@pytest.mark.parametrize("native,expected", [(False, "fp16"), (True, "bf16")])
def test_auto_precision_on_gpus_asks_for_native_bf16(monkeypatch, native, expected):
    import torch

    from mumath.sft import resolve_precision

    fake = FakeCuda(native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake)
    assert resolve_precision("auto", "cuda") == expected
    assert fake.calls == [False], "emulated bf16 (a T4) must not count"
    assert resolve_precision("fp32", "cuda") == "fp32"


@pytest.mark.parametrize("capabilities,expected", [({"avx512_bf16": True, "amx_bf16": False}, "bf16"),
                                                   ({"avx512_bf16": False, "amx_bf16": True}, "bf16"),
                                                   ({"avx512_bf16": False, "avx2": True}, "fp32")])
def test_auto_precision_on_cpus_follows_native_bf16(monkeypatch, capabilities, expected):
    import torch

    from mumath import sft

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert sft.resolve_precision("auto", "cpu") == expected == (sft.CPU_BF16 if expected != "fp32" else "fp32")
    assert sft.resolve_precision("fp32", "cpu") == "fp32", "fp32 stays selectable"


def test_cpu_bf16_falls_back_to_the_kernel_flags(monkeypatch, tmp_path):
    import torch

    from mumath import sft

    monkeypatch.delattr(torch.cpu, "get_capabilities")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    real = sft.cpuinfo_flags
    monkeypatch.setattr(sft, "cpuinfo_flags", lambda: real(cpuinfo))
    assert sft.cpu_has_native_bf16()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not sft.cpu_has_native_bf16()


def test_global_batch_is_computed_never_rounded():
    assert accumulation_steps(128, 4, 8) == 4 and accumulation_steps(4, 2, 1) == 2
    with pytest.raises(TrainConfigError, match=r"'global_batch_size' \(128\) is not a multiple of .* = 6"):
        accumulation_steps(128, 3, 2)


def test_bad_configuration_names_the_parameter(tmp_path):
    for field, value, message in [("finetune", "qlora4", "'finetune'"), ("mode", "pot", "'mode'"),
                                  ("packing", "yes", "'packing'"),
                                  ("per_device_batch_size", 0, "'per_device_batch_size'.*greater than or equal to 1"),
                                  ("max_rows", -2, "'max_rows'.*greater than or equal to 1")]:
        with pytest.raises(TrainConfigError, match=message):
            TrainConfig(output_dir=str(tmp_path), data="x", **{field: value}).validate()
    with pytest.raises(TrainConfigError, match="unknown training parameter"):
        TrainConfig.from_dict({"output_dir": "o", "data": "d", "lerning_rate": 1.0})


def test_qlora_trains_on_cpu_with_a_note_and_counts_its_4bit_weights_whole(tmp_path, tiny_model, rows_file):
    """bitsandbytes 0.50 runs NF4 on CPU: QLoRA trains there (slowly, and says so) and its merged final
    folder holds plain weights, moved by training."""
    import torch
    from safetensors.torch import load_file

    quantization = qlora_quantization("bf16")
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant and quantization.bnb_4bit_compute_dtype == torch.bfloat16
    adapters = lora_config(TrainConfig(output_dir="o", data="d", finetune="qlora"))
    assert adapters.r == 16 and adapters.target_modules == "all-linear"
    assert qlora_device_note("cuda") is None and "slow" in qlora_device_note("cpu")

    printed = []
    config = config_for(tmp_path, tiny_model, rows_file, finetune="qlora", max_steps=2, precision="fp32")
    stats = train(config, print_fn=printed.append)
    if not torch.cuda.is_available():
        assert QLORA_CPU_NOTE in printed
    final = Path(config.output_dir) / "final"
    base, merged = load_file(tiny_model / "model.safetensors"), load_file(final / "model.safetensors")
    assert set(merged) == set(base) and merged["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32
    assert not torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    # 4-bit weights pack two values a byte: counted by their shape, as many as the plain model's (+ the adapter's)
    assert stats["parameters"] == sum(tensor.numel() for tensor in base.values()) + stats["trainable_parameters"]
    assert 0 < stats["trainable_parameters"] < stats["parameters"] and stats["steps"] == 2


@pytest.mark.parametrize("finetune,packing", [("full", False), ("lora", True)])
def test_trains_and_writes_a_loadable_final_model(tmp_path, tiny_model, rows_file, finetune, packing):
    from mumath.models import load_model

    config = config_for(tmp_path, tiny_model, rows_file, finetune=finetune, packing=packing)
    stats = train(config)
    final = Path(config.output_dir) / "final"
    assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()
    model, tokenizer = load_model(str(final), device="cpu")
    assert tokenizer.chat_template and model.config.num_hidden_layers == 2
    log = [row for row in read_log(config.output_dir) if "loss" in row]
    assert [row["step"] for row in log] == [1, 2, 3] and all("learning_rate" in row for row in log)
    assert stats["steps"] == 3 and stats["gradient_accumulation_steps"] == 2 and stats["packing"] is packing
    assert stats["tokens_trained"] > 0 and stats["tokens_per_second"] > 0
    assert (stats["padding_share"] == 0.0) if packing else (0 < stats["padding_share"] < 1)
    assert stats["examples"]["masked_output_tokens"] > 0
    again = train(config)  # same configuration and data: reused, not retrained
    assert again == stats


def test_lora_merge_changes_weights_and_stage2_starts_from_stage1(tmp_path, tiny_model, rows_file):
    from safetensors.torch import load_file

    stage1 = config_for(tmp_path, tiny_model, rows_file, finetune="lora", output_dir=str(tmp_path / "stage1"))
    train(stage1)
    stage2 = config_for(tmp_path, tiny_model, rows_file, finetune="lora", output_dir=str(tmp_path / "stage2"),
                        init_model=str(tmp_path / "stage1" / "final"))
    train(stage2)
    base = load_file(tiny_model / "model.safetensors")
    one = load_file(tmp_path / "stage1" / "final" / "model.safetensors")
    two = load_file(tmp_path / "stage2" / "final" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not (one[name] == base[name]).all() and not (two[name] == one[name]).all()
    assert set(two) == set(base), "plain weights, no adapter keys"


def launch_json(config, path):
    path.write_text(json.dumps(config.model_dump()))
    return [sys.executable, "-m", "mumath.sft", str(path)]


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint_and_ends_at_the_same_step(tmp_path, tiny_model, rows_file):
    config = config_for(tmp_path, tiny_model, rows_file, max_steps=8, save_steps=2, global_batch_size=2,
                        per_device_batch_size=1)
    command = launch_json(config, tmp_path / "launch.json")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    state = Path(config.output_dir) / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 600
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert state.exists() and not (Path(config.output_dir) / "final").exists(), "killed mid-training"

    resumed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    stats = json.loads((Path(config.output_dir) / "stats.json").read_text())
    assert stats["steps"] == 8 and stats["resumed_from"] in {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    steps = [row["step"] for row in read_log(config.output_dir) if "loss" in row]
    assert steps == list(range(1, 9)), "each step logged once, the redone ones not twice"


@pytest.mark.slow
def test_two_processes_reach_the_loss_of_one(tmp_path, tiny_model, rows_file):
    from mumath.sft import launch

    # Batches drawn in the same order by one and by two processes: random order (length grouping sizes its
    # groups by the per-process batch).
    settings = dict(max_steps=3, global_batch_size=4, per_device_batch_size=2, packing=False, group_by_length=False,
                    precision="fp32")  # fp32: bf16 rounds the two reduction orders apart
    one = launch(config_for(tmp_path, tiny_model, rows_file, output_dir=str(tmp_path / "one"), **settings))
    two = launch(config_for(tmp_path, tiny_model, rows_file, output_dir=str(tmp_path / "two"), **settings),
                 num_processes=2)
    assert (one["processes"], one["gradient_accumulation_steps"]) == (1, 2)
    assert (two["processes"], two["gradient_accumulation_steps"]) == (2, 1)
    losses_one = [row["loss"] for row in read_log(tmp_path / "one") if "loss" in row]
    losses_two = [row["loss"] for row in read_log(tmp_path / "two") if "loss" in row]
    print("one process:", losses_one, "\ntwo processes:", losses_two)
    assert len(losses_one) == len(losses_two) == 3
    assert losses_two == pytest.approx(losses_one, rel=2e-3)


def test_data_fraction_takes_nested_seeded_subsets():
    from mumath.sft import data_subset

    rows = [{"id": index} for index in range(40)]
    quarter, half = data_subset(rows, 0.25, seed=0), data_subset(rows, 0.5, seed=0)
    assert len(quarter) == 10 and len(half) == 20 and data_subset(rows, 1.0, seed=0) == rows
    assert all(row in half for row in quarter), "the 25 % rows lie inside the 50 % rows"
    assert [row["id"] for row in half] == sorted(row["id"] for row in half), "file order kept"
    assert quarter != rows[:10], "a seeded sample, not the first rows"
    with pytest.raises(TrainConfigError, match="data_fraction"):
        TrainConfig(output_dir="x", data="y", data_fraction=0).validate()


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls, reads every uploaded file (no network)."""
    calls = []

    def __init__(self, *args, **kwargs):
        FakeHfApi.calls.append(("init", kwargs))

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        FakeHfApi.calls.append(("create_commit", repo_id, files, kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


def test_stage_logs_to_tensorboard_writes_a_model_card_and_pushes_final_with_it(tmp_path, tiny_model, rows_file,
                                                                               monkeypatch):
    """The stage folder's layout, the TensorBoard scalars, the card, and the push call (HfApi mocked)."""
    import huggingface_hub
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mumath.sft import run_stage

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"run": "run", "params_file": "params/x.yaml",
                                                       "git": {"commit": "abc123", "dirty": False}}))
    settings = {key: value for key, value in config_for(tmp_path, tiny_model, rows_file).model_dump().items()
                if key not in ("output_dir", "data", "init_model")}
    stats = run_stage(run_dir, "stage1", data=str(rows_file), init_model=str(tiny_model), push_to_hub=True,
                      hub_repo_id="someone/stage1", **settings)
    stage = run_dir / "stage1"
    assert {"final", "tensorboard", "README.md", "log.jsonl", "stats.json", "train_config.json"} <= \
        {path.name for path in stage.iterdir()}
    events = EventAccumulator(str(stage / "tensorboard")).Reload()
    scalars = {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert scalars[tag] == [1, 2, 3], tag
    logged = [row for row in read_log(stage) if "loss" in row]
    assert all(row["tokens_per_second"] > 0 for row in logged)
    card = (stage / "README.md").read_text()
    fingerprint = json.loads((stage / "train_config.json").read_text())["fingerprint"]
    assert card.startswith("---\n") and "library_name: transformers" in card and fingerprint in card
    assert str(rows_file) in card and "| learning_rate | 0.001 |" in card and "abc123" in card
    manifest_sha = __import__("hashlib").sha256((run_dir / "manifest.json").read_bytes()).hexdigest()
    assert manifest_sha in card and "Not evaluated yet" in card
    [(_, repo_id, kwargs)] = [call for call in FakeHfApi.calls if call[0] == "create_repo"]
    assert repo_id == "someone/stage1" and kwargs == {"repo_type": "model", "private": True, "exist_ok": True}
    [(_, _, files, _)] = [call for call in FakeHfApi.calls if call[0] == "create_commit"]
    assert files["README.md"].decode() == card and files["model.safetensors"] == \
        (stage / "final" / "model.safetensors").read_bytes()
    assert "tokenizer_config.json" in files and "training/log.jsonl" in files
    assert any(name.startswith("runs/events.out.tfevents") for name in files)
    assert stats["hub_commit"].endswith("/commit/1")
    assert ("init", {}) in FakeHfApi.calls  # no token passed in code: huggingface_hub reads HF_TOKEN itself


def test_report_to_is_validated_and_push_needs_a_repository_before_training(tmp_path):
    from mumath.cards import CardError
    from mumath.sft import report_targets, run_stage

    assert report_targets("tensorboard") == ["tensorboard"] and report_targets("none") == []
    assert report_targets(["tensorboard", "wandb"]) == ["tensorboard", "wandb"]
    with pytest.raises(TrainConfigError, match="'report_to' names \\['tensorbord'\\]"):
        TrainConfig(output_dir="o", data="d", report_to="tensorbord").validate()
    with pytest.raises(TrainConfigError, match="'none' cannot be combined"):
        report_targets(["none", "wandb"])
    with pytest.raises(CardError, match="'hub_repo_id' is None"):
        run_stage(tmp_path, "stage1", push_to_hub=True)
    assert not (tmp_path / "stage1").exists()


def test_changed_configuration_clears_old_curves_and_checkpoints(tmp_path):
    from mumath.sft import prepare_output

    for folder in ("checkpoints/checkpoint-2", "tensorboard"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_text("old")
    (tmp_path / "train_config.json").write_text(json.dumps({"fingerprint": "old"}))
    prepare_output(tmp_path, print_fn=lambda *_: None, digest="old")
    assert (tmp_path / "tensorboard" / "events.out.tfevents.1").exists()  # same configuration: resumed, kept
    prepare_output(tmp_path, print_fn=lambda *_: None, digest="new")
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "checkpoints").exists()


def test_a_lora_stage_with_checkpointing_trains_without_deprecation_warnings(tmp_path, tiny_model, rows_file):
    import warnings

    config = config_for(tmp_path, tiny_model, rows_file, finetune="lora", max_steps=1, gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config)
    said = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert said == []


def test_the_bitsandbytes_no_kernels_message_alone_is_dropped(caplog):
    import logging

    from mumath.sft import BITSANDBYTES_NO_KERNELS, drop_known_harmless_messages

    drop_known_harmless_messages()
    logger = logging.getLogger(BITSANDBYTES_NO_KERNELS[0])
    with caplog.at_level(logging.WARNING):
        logger.warning(BITSANDBYTES_NO_KERNELS[1] + ": %s. Please make sure ...", "No module named 'kernels'")
        logger.warning("another bitsandbytes warning")
    assert [record.getMessage() for record in caplog.records] == ["another bitsandbytes warning"]
