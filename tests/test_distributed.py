"""Training on 2 CPU ranks through the project's launch path (`mumath.sft.launch` -> `accelerate launch` with the
configs in configs/accelerate/), for DeepSpeed ZeRO-3 x {full, LoRA, QLoRA} and FSDP2 x {full, LoRA}.

Each run must end (LoRA and QLoRA under ZeRO-3 used to deadlock in the final merge), write `final/` once,
load, count the whole model's parameters (not one rank's shard), and reach what one process reaches: the same
per-step losses and, in `final/`, the same weights to well within the change that training made.
DeepSpeed runs ZeRO-3 on its CPU accelerator over gloo; FSDP2 shards over gloo too.
"""
from pathlib import Path

import pytest

from mumath.sft import TrainConfig, launch, train

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "accelerate"

@pytest.fixture(scope="module")
def rows_file(tmp_path_factory, data_dir):
    import json

    from mumath.records import read_jsonl

    rows = []
    for index, record in enumerate(read_jsonl(data_dir / "gsm8k" / "train.jsonl.gz")[:16]):
        body, answer = record["answer"].split("####")
        rows.append({"id": f"gsm8k-{index}", "question": record["question"],
                     "messages": [{"role": "user", "content": record["question"]},
                                  {"role": "assistant",
                                   "content": body.strip() + f"\nThe answer is \\boxed{{{answer.strip()}}}."}]})
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config_for(folder, tiny_model, rows_file, finetune):
    # Random batch order (length grouping sizes its groups by the per-process batch) and no packing: one
    # process and two draw the same global batches. 2 steps x 4 rows stay within the first epoch (at an
    # epoch's end, a distributed sampler pads its last batch, one process does not). fp32 on every path, so the comparison is exact math.
    return TrainConfig(output_dir=str(folder), data=str(rows_file), init_model=str(tiny_model), mode="tir",
                       finetune=finetune, max_steps=2, learning_rate=1e-3, global_batch_size=4,
                       per_device_batch_size=2, max_length=512, save_steps=100, warmup_ratio=0.0, seed=0,
                       packing=False, group_by_length=False, precision="fp32", lora_dropout=0.0)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model, rows_file):
    """The reference: each fine-tuning mode trained in this one process (cached per module)."""
    runs = {}

    def run(finetune):
        if finetune not in runs:
            folder = tmp_path_factory.mktemp(f"one-{finetune}")
            runs[finetune] = (train(config_for(folder, tiny_model, rows_file, finetune)), folder)
        return runs[finetune]
    return run


def losses(stage_dir):
    import json

    return [row["loss"] for row in map(json.loads, (Path(stage_dir) / "log.jsonl").read_text().splitlines())
            if "loss" in row]


def relative_difference(final, reference, base):
    """||final - reference|| / ||reference - base|| over every weight: 0 when equal, 1 when as far as training
    moved the weights."""
    from safetensors.torch import load_file

    final, reference, base = (load_file(Path(folder) / "model.safetensors") for folder in (final, reference, base))
    assert set(final) == set(reference), "the same tensors, no adapter keys"
    distance = sum(float((final[k].float() - reference[k].float()).pow(2).sum()) for k in reference)
    moved = sum(float((reference[k].float() - base[k].float()).pow(2).sum()) for k in reference)
    assert moved > 0, "training changed the weights"
    return (distance / moved) ** 0.5


@pytest.mark.slow
@pytest.mark.timeout(420)  # a deadlock (as LoRA under ZeRO-3 had) fails here; launch then ends every rank
@pytest.mark.parametrize("accelerate_config,finetune", [
    ("zero3.yaml", "full"), ("zero3.yaml", "lora"), ("zero3.yaml", "qlora"),
    ("fsdp2.yaml", "full"), ("fsdp2.yaml", "lora")])
def test_two_ranks_finish_write_final_once_and_match_one_process(
        tmp_path, tiny_model, rows_file, one_process, capfd, accelerate_config, finetune):
    from mumath.models import load_model

    reference, reference_dir = one_process(finetune)
    capfd.readouterr()
    config = config_for(tmp_path / "two", tiny_model, rows_file, finetune)
    stats = launch(config, num_processes=2, accelerate_config=CONFIGS / accelerate_config)
    output = "".join(capfd.readouterr())

    final = tmp_path / "two" / "final"
    assert output.count(f"[train] wrote {final}") == 1, "final/ written by rank 0 alone, once"
    assert (final / "model.safetensors").exists() and not final.with_name("final.partial").exists()
    model, _ = load_model(str(final), device="cpu")
    assert model.config.num_hidden_layers == 2
    assert (stats["processes"], stats["gradient_accumulation_steps"], stats["steps"]) == (2, 1, 2)
    # the whole model, not one rank's shard (ZeRO-3 keeps an empty local tensor)
    assert (stats["parameters"], stats["trainable_parameters"]) == \
        (reference["parameters"], reference["trainable_parameters"])
    assert losses(tmp_path / "two") == pytest.approx(losses(reference_dir), rel=2e-3)
    assert relative_difference(final, reference_dir / "final", tiny_model) < 0.05


def test_an_interrupted_launch_leaves_no_rank_behind(tmp_path):
    """A timeout or Ctrl-C in the caller ends the launcher and every process it started."""
    import os
    import signal
    import sys
    import threading
    import time

    from mumath.sft import run_process_group

    child_pid = tmp_path / "child.pid"
    script = (f"import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(120)']); open({str(child_pid)!r}, 'w').write(str(child.pid)); time.sleep(120)")

    def interrupt(signum, frame):
        raise TimeoutError("test timeout")

    def interrupt_once_the_grandchild_runs():
        deadline = time.time() + 60
        while not child_pid.exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGALRM)

    previous = signal.signal(signal.SIGALRM, interrupt)
    threading.Thread(target=interrupt_once_the_grandchild_runs, daemon=True).start()
    try:
        with pytest.raises(TimeoutError):
            run_process_group([sys.executable, "-c", script], dict(os.environ))
    finally:
        signal.signal(signal.SIGALRM, previous)
    pid = int(child_pid.read_text())
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(f"/proc/{pid}") and \
            "Z" not in open(f"/proc/{pid}/stat").read().split()[2]:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_an_unsupported_mode_or_a_missing_config_is_refused_before_launch(tmp_path):
    from mumath.sft import TrainConfigError

    config = config_for(tmp_path / "stage", tmp_path / "model", tmp_path / "rows.jsonl", "qlora")
    with pytest.raises(TrainConfigError, match="'qlora' and accelerate_config .*fsdp2.yaml is FSDP"):
        launch(config, num_processes=2, accelerate_config=CONFIGS / "fsdp2.yaml")
    with pytest.raises(TrainConfigError, match="'accelerate_config': .*zero4.yaml does not exist"):
        launch(config, num_processes=2, accelerate_config=CONFIGS / "zero4.yaml")
    assert not (tmp_path / "stage").exists(), "refused before writing anything"
