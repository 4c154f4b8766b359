"""The cost / GPU-hour estimate of a params file (`python -m mumath check --estimate`)."""
import pytest

from mumath.config import ParamsError
from mumath.estimate import ASSUMPTIONS, estimate, format_estimate, model_billions
from mumath.records import write_json, write_jsonl
from mumath.runner import main

PARAMS = """
run: est
teacher_model: gpt-4o-mini
seed_benchmarks: [gsm8k:train, math:train_offline]
seeds_per_benchmark: 10
steps:
  augment:
    methods: {rephrase: 2, alter: 1, fobar: 1, bf_trans: 1}
    price_per_1m_prompt: 0.15
    price_per_1m_completion: 0.6
  synthesize:
    stages: {cot: 2, tir: 3}
    max_rounds: 3
    few_shot: 1
  evaluate:
    model: meta-llama/Llama-2-13b-hf
    benchmarks: [gsm8k, math500]
    limit: null
    modes: [tir]
"""


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "est.yaml"
    path.write_text(PARAMS)
    return path


def test_requests_tokens_cost_and_gpu_hours_follow_the_params(params_file):
    a = dict(ASSUMPTIONS, fobar_teacher_share=0.0, augment_keep_share=0.5)
    result = estimate(params_file, assumptions={"fobar_teacher_share": 0.0, "augment_keep_share": 0.5})
    seeds = 20
    augment = result["teacher"]["augment"]
    requests = seeds * 3 + seeds * 1  # rephrase x2 + alter, then bf_trans on each FOBAR question
    assert augment["requests"] == requests and augment["seeds"] == seeds
    assert augment["prompt_tokens"] == requests * a["augment_prompt_tokens"]
    assert augment["cost_usd"] == pytest.approx((requests * a["augment_prompt_tokens"] * 0.15
                                                 + requests * a["augment_completion_tokens"] * 0.6) / 1e6)
    questions = seeds + (seeds * 3 + seeds) * 0.5 + seeds  # seeds, kept rewrites, FOBAR (built, always kept)
    tir = result["teacher"]["synthesize-tir"]
    assert tir["solutions"] == round(questions * 3)
    assert tir["requests"] == round(questions * 3 * a["tir_requests_per_solution"])
    assert tir["prompt_tokens"] == round(questions * 3 * a["tir_requests_per_solution"]
                                         * (a["tir_prompt_tokens_per_request"] + a["few_shot_example_tokens"]))
    assert tir["cost_usd"] is None and result["totals"]["cost_usd"] is None  # synthesize has no prices
    stage2 = result["training"]["stage2"]
    per_gpu = a["train_mfu"] * a["gpu_peak_flops"] / (6 * 13e9)  # the size comes from the model's name
    assert stage2["gpu_hours"] == pytest.approx(questions * 3 * a["filter_keep_share"]
                                                * a["train_tokens_per_row"]["stage2"] * 3 / per_gpu / 3600, rel=1e-6)
    evaluation = result["evaluation"]["tir"]
    assert evaluation["problems"] == 1319 + 500
    assert evaluation["gpu_hours"] == pytest.approx(
        1819 * a["eval_completion_tokens"]["tir"] / (a["eval_decode_tokens_per_second_7b"] * 7 / 13) / 3600)
    text = format_estimate(result)
    assert f"teacher augment: {requests} requests" in text and "cost unknown" in text


def test_measured_usage_replaces_the_assumptions(params_file, tmp_path):
    run = tmp_path / "pilot"
    write_json(run / "augment" / "stats.json", {
        "methods": {"rephrase": {"kept": 3, "rejected": 1}, "alter": {"kept": 1, "rejected": 3}, "seeds": 4},
        "usage": {"by_step": {"augment": {"requests": 8, "prompt_tokens": 800, "completion_tokens": 160}}}})
    write_jsonl(run / "synthesize" / "tir.jsonl", [
        {"stage": "tir", "rounds": 2, "prompt_tokens": 1000, "completion_tokens": 300},
        {"stage": "tir", "rounds": 4, "prompt_tokens": 2600, "completion_tokens": 500}])
    write_json(run / "filter" / "funnel.json", {"stages": {"tir": {"input": 10, "format": 6, "cap": 4}}})
    write_json(run / "evaluate" / "gsm8k" / "tir" / "metrics.json",
               {"benchmark": "gsm8k", "mode": "tir", "n": 4, "completion_tokens": 1200})
    result = estimate(params_file, usage_from=run)
    assert result["measured"]["augment_prompt_tokens"] == 100 and result["measured"]["augment_keep_share"] == 0.5
    assert result["measured"]["tir_requests_per_solution"] == 3.0
    assert result["measured"]["tir_prompt_tokens_per_request"] == 3600 / 6
    assert result["measured"]["filter_keep_share"] == 0.4
    assert result["measured"]["eval_completion_tokens"]["tir"] == 300
    assert result["teacher"]["augment"]["prompt_tokens"] == result["teacher"]["augment"]["requests"] * 100
    assert "augment tokens" in result["measured_from"] and "augment_prompt_tokens" not in result["assumptions"]


def test_check_estimate_cli(params_file, capsys):
    assert main(["check", "--estimate", str(params_file)]) == 0
    out = capsys.readouterr().out
    assert "ok (run 'est'" in out and "teacher augment:" in out and "GPU hours" in out
    assert main(["check", str(params_file)]) == 0 and "teacher augment" not in capsys.readouterr().out


def test_paper_recipes_validate_and_estimate(capsys):
    from mumath.config import REPO_ROOT

    files = [str(REPO_ROOT / "params" / name) for name in ("paper-7b.yaml", "paper-7b-code.yaml")]
    assert main(["check", "--estimate", *files]) == 0
    out = capsys.readouterr().out
    assert out.count("teacher total:") == 2 and "training stage2:" in out and "$" in out


def test_unknown_split_needs_a_limit(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("run: x\nsteps:\n  evaluate:\n    benchmarks: [my-set]\n    limit: null\n"
                    "    extra_benchmarks: {my-set: {splits: {test: {local: /x.jsonl}}, question: q, answer: a}}\n")
    with pytest.raises(ParamsError, match="my-set:test"):
        estimate(path)


def test_model_billions():
    assert model_billions("meta-llama/Llama-2-7b-hf", 1) == 7
    assert model_billions("codellama/CodeLlama-34b-Python-hf", 1) == 34
    assert model_billions("Qwen/Qwen2.5-Math-1.5B-Instruct", 1) == 1.5
    assert model_billions("HuggingFaceTB/SmolLM2-360M", 1) == 0.36
    assert model_billions("embedded", 1) == 0.135 and model_billions("outputs/x/stage2/final", 7) == 7



def test_training_steps_of_the_file_are_used(monkeypatch):
    """With training steps in the plan (the training branch's parameters), their epochs / max_steps count."""
    from mumath import estimate as module

    plan = {"synthesize": {"seed_benchmarks": ["gsm8k:train"], "seeds_per_benchmark": 100, "stages": {"cot": 1, "tir": 1}},
            "stage1": {"epochs": 2.0, "init_model": "x/Llama-2-13b-hf"},
            "stage2": {"max_steps": 10, "global_batch_size": 8}}
    monkeypatch.setattr(module, "load_params", lambda path: ("r", plan))
    result = module.estimate("unused.yaml")
    a = ASSUMPTIONS
    stage1, stage2 = result["training"]["stage1"], result["training"]["stage2"]
    assert stage1["epochs"] == 2.0 and stage1["model_billions"] == 13 and stage1["from"] == "the file's training step"
    assert stage1["tokens"] == round(100 * a["filter_keep_share"] * a["train_tokens_per_row"]["stage1"] * 2)
    assert stage2["tokens"] == 10 * 8 * a["train_tokens_per_row"]["stage2"] and stage2["model_billions"] == 13


def test_estimate_states_the_gpu_and_throughput_it_assumes(params_file):
    result = estimate(params_file)
    text = format_estimate(result)
    per_gpu_7b = round(ASSUMPTIONS["train_mfu"] * ASSUMPTIONS["gpu_peak_flops"] / (6 * 7e9))
    assert result["gpu"]["name"] == "A100-80GB" and result["gpu"]["train_mfu_from"] == "assumed"
    assert f"GPU: A100-80GB, 312 TFLOP/s dense bf16 peak; training at MFU 0.4 (assumed) = {per_gpu_7b:,} " \
           "tokens/s/GPU for a 7B model" in text
    assert "(MFU 0.4 (assumed) on A100-80GB)" in text


def write_stage_stats(run, stage, **stats):
    write_json(run / stage / "stats.json", dict({"finetune": "full", "tokens_trained": 1000}, **stats))


def test_usage_from_a_gpu_run_uses_its_mfu_gpu_and_tokens_per_second(params_file, tmp_path):
    run = tmp_path / "gpu-run"
    # stage1 trained a 13B model (the plan's size): its tokens/s per GPU is used as measured.
    write_stage_stats(run, "stage1", tokens_per_second=8000.0, processes=8, parameters=13.0e9, device="cuda",
                      gpu="NVIDIA H100 80GB HBM3", mfu=0.31)
    result = estimate(params_file, usage_from=run)
    assert result["gpu"]["name"] == "NVIDIA H100 80GB HBM3" and result["gpu"]["peak_flops"] == 989e12
    assert result["gpu"]["train_mfu"] == pytest.approx(0.31) and result["measured"]["train_mfu"] == 0.31
    assert result["training"]["stage1"]["tokens_per_gpu_second"] == 1000
    assert result["training"]["stage1"]["throughput_from"].startswith("measured: ")
    # stage2 has no measurement of its own: the measured MFU on the measured GPU
    stage2 = result["training"]["stage2"]
    assert stage2["tokens_per_gpu_second"] == round(0.31 * 989e12 / (6 * 13e9))
    assert stage2["throughput_from"] == "MFU 0.31 (measured) on NVIDIA H100 80GB HBM3"
    assert "train_mfu" not in result["assumptions"]
    assert "(measured" in format_estimate(result).splitlines()[1]


def test_usage_from_a_cpu_run_reports_its_tokens_per_second_and_keeps_the_assumed_mfu(params_file, tmp_path):
    run = tmp_path / "cpu-run"
    write_stage_stats(run, "stage2", tokens_per_second=57.0, processes=1, parameters=134_515_008, device="cpu",
                      gpu=None, mfu=None)
    result = estimate(params_file, usage_from=run)
    assert result["gpu"]["train_mfu"] == ASSUMPTIONS["train_mfu"] and result["gpu"]["name"] == "A100-80GB"
    assert "57.0 tokens/s on cpu" in result["measured_from"]["stage2 throughput"]
    assert result["training"]["stage2"]["throughput_from"] == "MFU 0.4 (assumed) on A100-80GB"
