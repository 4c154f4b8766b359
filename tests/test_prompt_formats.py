"""Prompt formats as data and the one BOS rule: the ids trained on are the ids every backend serves."""
import json

import pytest

from loopback_vllm import LoopbackVLLM
from mumath.backends import OpenAIBackend, Sampling, TransformersBackend, make_backend
from mumath.models import load_model, load_tokenizer
from mumath.prompts import (MUMATH_CHAT_TEMPLATE, adds_bos, apply_prompt_format, build_messages, encode_prompt,
                            format_prompt_dir, prompt_format, render_prompt)
from mumath.sft_examples import IGNORE, build_examples, mask_example

QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many?"
SOLUTION = "```python\nprint(48 + 48 // 2)\n```\n```output\n72\n```\nSo the answer is \\boxed{72}."


def official_messages(question=QUESTION, solution=None, mode="tir"):
    return build_messages(question, mode, prompt_dir=format_prompt_dir("mumath"), solution=solution)


@pytest.fixture
def llama_tokenizer(llama_style_model):
    return load_tokenizer(str(llama_style_model))


def test_the_llama_style_tokenizer_adds_bos_and_has_no_chat_template(llama_tokenizer, embedded_dir):
    assert adds_bos(llama_tokenizer) and not llama_tokenizer.chat_template
    assert not adds_bos(load_tokenizer(str(embedded_dir)))  # SmolLM2: no BOS, ids unchanged by the rule


def test_the_official_format_renders_as_the_official_script(llama_tokenizer):
    apply_prompt_format(llama_tokenizer, "mumath")
    prompt = render_prompt(llama_tokenizer, official_messages())
    assert prompt == f"<|user|>\n{QUESTION}\n<|assistant|>\n"
    # MuMath-Code's finetune_stage2.py: _concat_messages(messages).strip() -> solution + eos, no newline after
    full = render_prompt(llama_tokenizer, official_messages(solution=SOLUTION), add_generation_prompt=False)
    assert full == f"<|user|>\n{QUESTION}\n<|assistant|>\n{SOLUTION}</s>"
    assert prompt_format("tora") is prompt_format("mumath")
    with pytest.raises(ValueError, match="prompt_format.*chat.*mumath"):
        prompt_format("alpaca")


def test_trained_ids_equal_the_ids_a_vllm_style_server_receives(llama_tokenizer):
    """BOS once, in training and at the server (vLLM's /v1/completions adds it to a prompt string)."""
    apply_prompt_format(llama_tokenizer, "mumath")
    example = mask_example(llama_tokenizer, official_messages(solution=SOLUTION))
    backend = OpenAIBackend(None, "m", tokenizer=llama_tokenizer, progress=False)
    prompt = backend.format_prompt(official_messages())
    with LoopbackVLLM(llama_tokenizer, answer=lambda p: "ok") as server:
        backend.base_url = server.base_url
        backend.complete([prompt], Sampling(max_new_tokens=4))
    served = server.received[0]["ids"]
    assert served[0] == llama_tokenizer.bos_token_id and served[1] != llama_tokenizer.bos_token_id
    assert example["input_ids"][:len(served)] == served, "training ids != the ids the server received"
    assert all(label == IGNORE for label in example["labels"][:len(served)])
    assert example["labels"][len(served)] != IGNORE and example["labels"][-1] == llama_tokenizer.eos_token_id


def test_a_template_that_writes_bos_gets_it_once(llama_tokenizer):
    """Llama-2-chat's template starts with {{ bos_token }}: the text drops it, the tokenizer adds it back."""
    llama_tokenizer.chat_template = "{{ bos_token }}" + MUMATH_CHAT_TEMPLATE
    prompt = render_prompt(llama_tokenizer, official_messages())
    assert not prompt.startswith("<s>")
    ids = encode_prompt(llama_tokenizer, prompt)
    assert ids.count(llama_tokenizer.bos_token_id) == 1 and ids == llama_tokenizer(prompt)["input_ids"]
    example = mask_example(llama_tokenizer, official_messages(solution=SOLUTION))
    assert example["input_ids"][:len(ids)] == ids


@pytest.mark.parametrize("backend", ["transformers", "transformers-generate"])
def test_local_backends_feed_the_model_the_trained_prompt_ids(llama_style_model, backend):
    engine = make_backend(backend, str(llama_style_model), prompt_format="mumath", progress=False)
    tokenizer = engine.tokenizer
    prompt = engine.format_prompt(official_messages())
    trained = mask_example(tokenizer, official_messages(solution=SOLUTION))
    first_target = next(i for i, label in enumerate(trained["labels"]) if label != IGNORE)
    prompt_ids = trained["input_ids"][:first_target]
    [completion] = engine.complete([prompt], Sampling(max_new_tokens=2))
    assert completion.prompt_tokens == len(prompt_ids) == len(encode_prompt(tokenizer, prompt))
    assert encode_prompt(tokenizer, prompt) == prompt_ids
    if hasattr(engine, "close"):
        engine.close()


def test_a_checkpoint_without_chat_template_evaluates_like_for_like(llama_style_model, data_dir, tmp_path):
    """Released MuMath-Code-L/CL and ToRA checkpoints have no chat template (was: ValueError)."""
    from mumath.evaluate import run_evaluation

    for fmt in ("mumath", "chat"):
        [metrics] = run_evaluation(str(tmp_path / fmt), model=str(llama_style_model), data_dir=str(data_dir),
                                   benchmarks=["gsm8k"], limit=2, modes=["cot"], max_new_tokens=4,
                                   prompt_format=fmt, exec_workers=1, progress=False)
        assert metrics["n"] == 2
        rows = [json.loads(line) for line in
                open(tmp_path / fmt / "evaluate" / "gsm8k" / "cot" / "trajectories.jsonl")]
        assert rows[0]["prompt"].startswith("<|user|>\n" if fmt == "mumath" else "You are a helpful")
        assert rows[0]["prompt"].endswith("<|assistant|>\n" if fmt == "mumath" else "Assistant:\n")


@pytest.mark.slow
def test_official_format_trains_and_evaluates_on_the_embedded_model(tmp_path, data_dir):
    from mumath.evaluate import run_evaluation
    from mumath.records import read_jsonl
    from mumath.sft import TrainConfig, train

    rows = []
    for record in read_jsonl(data_dir / "gsm8k" / "train.jsonl.gz")[:4]:
        body, answer = record["answer"].split("####")
        rows.append({"question": record["question"], "messages": [
            {"role": "user", "content": record["question"]},
            {"role": "assistant", "content": body.strip() + f"\nThe answer is \\boxed{{{answer.strip()}}}."}]})
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TrainConfig(output_dir=str(tmp_path / "stage1"), data=str(data), init_model="embedded",
                         prompt_format="mumath", max_steps=2,
                         global_batch_size=2, per_device_batch_size=1, max_length=512, packing=False,
                         learning_rate=1e-5, save_steps=10)
    stats = train(config, print_fn=lambda *a: None)
    final = tmp_path / "stage1" / "final"
    assert stats["steps"] == 2
    assert json.loads((final / "mumath_train.json").read_text())["prompt_format"] == "mumath"
    saved = load_tokenizer(str(final))
    assert saved.chat_template == MUMATH_CHAT_TEMPLATE  # evaluation of final/ formats the same way
    [metrics] = run_evaluation(str(tmp_path), model=str(final), data_dir=str(data_dir), benchmarks=["gsm8k"],
                               limit=2, modes=["tir"], max_new_tokens=24, max_rounds=1, prompt_format="mumath",
                               exec_workers=1, progress=False)
    assert metrics["n"] == 2
    [row, _] = [json.loads(line) for line in open(tmp_path / "evaluate" / "gsm8k" / "tir" / "trajectories.jsonl")]
    assert row["prompt"] == f"<|user|>\n{row['question'].strip()}\n<|assistant|>\n"
    tokenizer = load_tokenizer(str(final))
    [example], _ = build_examples([rows[0]], tokenizer, "tir", prompt_dir=format_prompt_dir("mumath"))
    prompt_ids = encode_prompt(tokenizer, render_prompt(tokenizer, official_messages(rows[0]["question"])))
    assert example["input_ids"][:len(prompt_ids)] == prompt_ids


def test_openai_chat_refuses_a_format_it_cannot_apply(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    with pytest.raises(ValueError, match="prompt_format.*openai-chat"):
        make_backend("openai-chat", "gpt-4o", prompt_format="mumath")


@pytest.mark.parametrize("name, base", [("paper-7b.yaml", "meta-llama/Llama-2-7b-hf"),
                                        ("paper-7b-code.yaml", "codellama/CodeLlama-7b-Python-hf")])
def test_paper_recipes_follow_the_official_scripts(name, base):
    """scripts/train_7b_13b_stage{1,2}.sh and infer.sh of youweihao-tal/MuMath-Code (docs/prompt-formats.md)."""
    from mumath.config import REPO_ROOT, load_params

    _, plan = load_params(REPO_ROOT / "params" / name)
    assert plan["stage1"]["init_model"] == base and plan["filter"]["training_tokenizer"] == base
    for stage in ("stage1", "stage2"):
        settings = plan[stage]
        assert settings["prompt_format"] == "mumath" and settings["group_by_length"] is False
        assert (settings["learning_rate"], settings["lr_scheduler"], settings["warmup_ratio"], settings["weight_decay"],
                settings["epochs"], settings["global_batch_size"], settings["per_device_batch_size"],
                settings["num_processes"], settings["max_length"], settings["precision"]) == \
            (2e-5, "linear", 0.03, 0.0, 3.0, 128, 16, 8, 2048, "bf16")
    evaluation = plan["evaluate"]
    assert evaluation["prompt_format"] == "mumath" and evaluation["server"]["engine"] == "vllm"
    assert (evaluation["max_new_tokens"], evaluation["max_rounds"]) == (1024, 4)  # infer.sh: 1024 per call, 4 calls
    assert evaluation["max_concurrency"] >= 256
