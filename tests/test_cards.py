"""Model and dataset cards and the hub upload (HfApi mocked: no network)."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from mumath.cards import (CardError, base_model_id, model_card, push_folder, stage_evaluation, write_dataset_card,
                          write_model_card)
from mumath.sft import TrainConfig

GOOD_TIR = ("First we add the two numbers given in the question together.\n```python\nprint(2 + 3)\n```\n"
            "```output\n5\n```\nSo the answer is \\boxed{5}.")


class FakeHfApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, {op.path_in_repo: Path(op.path_or_fileobj).read_text()
                                                      for op in operations}, kwargs))
        return type("CommitInfo", (), {"commit_url": "https://hub.invalid/c/1"})()


def stage_folder(run_dir, name="stage2", init_model="embedded"):
    """A trained stage's files in the layout `mumath.sft.train` writes (model weights left out)."""
    stage = Path(run_dir) / name
    (stage / "final").mkdir(parents=True)
    (stage / "final" / "config.json").write_text("{}")
    config = TrainConfig(output_dir=str(stage), data=f"{run_dir}/filter/stage2.jsonl", init_model=init_model,
                         mode="tir", finetune="lora")
    (stage / "train_config.json").write_text(json.dumps({"fingerprint": "f" * 64, "config": asdict(config),
                                                         "init_path": "/x"}))
    (stage / "stats.json").write_text(json.dumps({"steps": 4, "examples": {"rows": 10, "examples": 9}}))
    return stage


def entry(model, role, benchmark, successes, n):
    from mumath.analysis import share

    return {"run": "run", "model": model, "role": role, "benchmark": benchmark, "mode": "tir",
            "accuracy": share(successes, n), "contaminated": None}


def test_model_card_gains_its_evaluation_table_and_only_its_own(tmp_path):
    stage = stage_folder(tmp_path)
    card = model_card(stage)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "| lora_r | 16 |" in card
    assert "Not evaluated yet" in card and "run manifest: none found" in card
    entries = [entry(str(stage / "final"), "stage-2", "gsm8k", 3, 4), entry("embedded", "base", "gsm8k", 1, 4),
               entry(str(tmp_path / "stage1" / "final"), "stage-1", "gsm8k", 2, 4)]
    mine = stage_evaluation(stage, entries)
    assert [e["role"] for e in mine] == ["this model", "base"]
    card = write_model_card(stage, evaluation=mine).read_text()
    assert "| this model | gsm8k | tir | 4 | 3 | 75.0 | 30.1-95.4 |" in card
    assert "| base | gsm8k | tir | 4 | 1 | 25.0 |" in card and "stage-1" not in card
    assert stage_evaluation(stage_folder(tmp_path, "stage1"), entries[1:2]) == []
    assert base_model_id("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B" and base_model_id(str(stage)) is None
    (stage / "final" / "mumath_train.json").write_text(json.dumps({"init_model": "embedded"}))
    assert base_model_id(str(stage / "final")) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # stage 2 from stage 1


def test_filter_step_writes_a_dataset_card_and_pushes_it_with_the_data(tmp_path, data_dir, monkeypatch):
    import huggingface_hub

    from mumath.filter import run_filter

    api = FakeHfApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", type("HfApi", (), {"__new__": lambda cls, *a, **k: api}))
    (tmp_path / "synthesize").mkdir()
    rows = [{"id": f"q{i}/tir/0", "question_id": f"q{i}", "stage": "tir", "sample": 0,
             "question": f"Add two and three, problem {i}.", "answer": "5", "pred": "5",
             "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": GOOD_TIR}],
             "teacher": "test", "source": "test", "seed_id": f"q{i}", "method": "seed", "rounds": 2,
             "finish": "eos", "executions": 1, "execution_errors": 0, "errors_fixed": 0, "timeouts": 0,
             "prefix_cot": True} for i in range(3)]
    (tmp_path / "synthesize" / "tir.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    stats = run_filter(tmp_path, data_dir=str(data_dir), decontaminate_benchmarks=["gsm8k"], tokenizer="embedded",
                       progress=False, push_to_hub=True, hub_repo_id="someone/data", hub_private=False)
    card = (tmp_path / "filter" / "README.md").read_text()
    assert "config_name: stage2" in card and "data_files: stage2.jsonl" in card
    assert "| `stage2.jsonl` | 3 |" in card and "13-gram overlap" in card and "none found" in card
    [repo] = [call for call in api.calls if call[0] == "create_repo"]
    assert repo == ("create_repo", "someone/data", {"repo_type": "dataset", "private": False, "exist_ok": True})
    [(_, _, files, kwargs)] = [call for call in api.calls if call[0] == "create_commit"]
    assert files["README.md"] == card and len(files["stage2.jsonl"].splitlines()) == 3
    assert {"funnel.json", "contamination.json", "stats.json"} <= set(files) and kwargs["repo_type"] == "dataset"
    assert stats["hub_commit"] == "https://hub.invalid/c/1"


def test_push_refuses_a_bad_repository_or_folder_before_any_upload(tmp_path):
    api = FakeHfApi()
    stage = stage_folder(tmp_path)
    with pytest.raises(CardError, match="no model card"):
        push_folder(stage, "someone/model", api=api)
    write_model_card(stage)
    with pytest.raises(CardError, match="'hub_repo_id' is 'model'"):
        push_folder(stage, "model", api=api)
    with pytest.raises(CardError, match="neither a trained stage folder"):
        push_folder(tmp_path, "someone/model", api=api)
    assert api.calls == []
    assert push_folder(stage, "someone/model", api=api) == "https://hub.invalid/c/1"
    assert set(api.calls[1][2]) == {"config.json", "README.md", "training/stats.json", "training/train_config.json"}


def test_push_command_uploads_a_stage_folder_private_by_default(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from mumath.runner import main

    api = FakeHfApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", type("HfApi", (), {"__new__": lambda cls, *a, **k: api}))
    stage = stage_folder(tmp_path)
    write_model_card(stage)
    assert main(["push", str(stage), "--repo-id", "someone/model"]) == 0
    assert api.calls[0] == ("create_repo", "someone/model", {"repo_type": "model", "private": True, "exist_ok": True})
    assert "https://hub.invalid/c/1" in capsys.readouterr().out
    assert main(["push", str(tmp_path), "--repo-id", "someone/model"]) == 2
    assert "neither a trained stage folder" in capsys.readouterr().err
