"""The training steps in the runner: '{run_dir}' wiring, recipes, and stage1 -> stage2 -> evaluate end to end."""
import json
from pathlib import Path

import pytest
import yaml

from mumath.config import load_params
from mumath.runner import expand_run_dir

REPO = Path(__file__).resolve().parent.parent


def test_run_dir_placeholder_is_expanded_everywhere():
    params = {"model": "{run_dir}/stage2/final", "data": ["{run_dir}/a.jsonl"], "n": 3, "nested": {"p": "{run_dir}"}}
    assert expand_run_dir(params, "/runs/x") == {"model": "/runs/x/stage2/final", "data": ["/runs/x/a.jsonl"],
                                                 "n": 3, "nested": {"p": "/runs/x"}}


def test_quickstart_trains_both_stages_and_evaluates_the_base_and_the_stage2_model():
    run, plan = load_params(REPO / "params" / "quickstart.yaml")
    assert list(plan)[-5:] == ["stage1", "stage2", "evaluate.base", "evaluate", "analysis"]
    assert "data" not in plan["stage1"] and "data" not in plan["stage2"]  # the filtered data: their default
    assert "limit" not in plan["stage1"] and "limit" not in plan["stage2"]  # evaluation's sample size stays there
    assert plan["evaluate"]["model"] == "{run_dir}/stage2/final" and plan["evaluate.base"]["model"] == "embedded"
    assert {k: v for k, v in plan["evaluate"].items() if k != "model"} == \
        {k: v for k, v in plan["evaluate.base"].items() if k != "model"}  # the same sample and settings
    assert plan["stage1"]["finetune"] == plan["stage2"]["finetune"] == "lora"


def test_paper_recipe_batch_is_computed_from_its_parts():
    from mumath.sft import accumulation_steps

    _, plan = load_params(REPO / "params" / "paper-7b.yaml")
    stage = plan["stage1"]
    assert (stage["learning_rate"], stage["epochs"], stage["global_batch_size"], stage["max_length"]) == \
        (2e-5, 3.0, 128, 2048)
    assert accumulation_steps(stage["global_batch_size"], stage["per_device_batch_size"],
                              stage["num_processes"]) == 1  # official: 16 per GPU x 8 GPUs
    assert (REPO / stage["accelerate_config"]).exists()
    load_params(REPO / "params" / "colab-t4-qlora.yaml")


@pytest.mark.slow
def test_stage1_stage2_evaluate_through_the_notebooks(tmp_path, data_dir):
    """papermill runs 04 -> 05 -> 06; the evaluate step loads the stage-2 model by '{run_dir}'."""
    import subprocess
    import sys

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mumath.models import embedded_model_dir

    tiny = tmp_path / "tiny"
    config = AutoConfig.from_pretrained(embedded_model_dir())
    config.update(dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16))
    AutoModelForCausalLM.from_config(config).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(tiny)
    rows = [{"question": "What is 2 + 3?", "messages": [{"role": "assistant", "content": "2 + 3 = 5. \\boxed{5}"}]},
            {"question": "What is 6 * 7?", "messages": [{"role": "assistant", "content":
             "```python\nprint(6 * 7)\n```\n```output\n42\n```\nSo \\boxed{42}."}]}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    training = dict(max_steps=1, global_batch_size=2, per_device_batch_size=2, max_length=256, finetune="lora")
    params = {"run": "stages", "seed": 0, **training, "steps": {
        "stage1": {"init_model": str(tiny), "data": str(data)},
        "stage2": {"data": str(data)},
        "evaluate": {"model": "{run_dir}/stage2/final", "benchmarks": ["gsm8k"], "limit": 1, "modes": ["tir"],
                     "max_new_tokens": 8, "max_rounds": 1, "exec_workers": 1, "data_dir": str(data_dir)},
        "analysis": {}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "-m", "mumath", "run", str(path), "--outputs", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "o" / "stages"
    stage2 = json.loads((run_dir / "stage2" / "stats.json").read_text())
    assert stage2["init_model"] == str(run_dir / "stage1" / "final") and stage2["steps"] == 1
    assert (run_dir / "evaluate" / "gsm8k" / "tir" / "metrics.json").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {manifest["steps"][s]["status"] for s in ("stage1", "stage2", "evaluate")} == {"completed"}
    assert any(name.endswith("stage2/final") for name in manifest["inputs"]), "evaluate recorded the trained model"
    # watch training: event files in each stage folder; the stage-2 card gains its evaluation from the analysis
    assert all(any((run_dir / stage / "tensorboard").glob("events.out.tfevents.*")) for stage in ("stage1", "stage2"))
    card = (run_dir / "stage2" / "README.md").read_text()
    assert "| this model | gsm8k | tir | 1 |" in card and "Not evaluated yet" in (run_dir / "stage1" / "README.md").read_text()
    page = (run_dir / "analysis" / "browser.html").read_text()
    assert page.count('<details class="traj"') == 1 and "[browser.html](browser.html)" in \
        (run_dir / "analysis" / "report.md").read_text()
