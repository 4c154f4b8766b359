"""One request the server rejects does not abort the benchmark; max_tokens fits the context where it is known."""
import json

import pytest

from loopback_vllm import LoopbackVLLM
from mumath.backends import OpenAIBackend, Sampling
from mumath.data import load_benchmark
from mumath.evaluate import run_evaluation
from mumath.models import load_tokenizer
from mumath.teacher import Teacher


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return load_tokenizer(str(embedded_dir))


def gold_answers(data_dir, limit):
    return {record["question"]: record["answer"] for record in
            load_benchmark("gsm8k", "test", data_dir=str(data_dir), limit=limit, seed=0)}


def test_one_rejected_prompt_in_four_leaves_the_others_finished(tokenizer, data_dir, tmp_path):
    golds = gold_answers(data_dir, 8)
    rejected = set(list(golds)[::4])  # 2 of 8 questions

    def answer(prompt):
        question = next(q for q in golds if q in prompt)
        return f"The answer is \\boxed{{{golds[question]}}}."

    def reject(prompt):
        return any(question in prompt for question in rejected) and not accept_all[0]

    accept_all = [False]
    with LoopbackVLLM(tokenizer, "m", answer=answer, reject=reject) as server:
        kwargs = dict(model="embedded", backend="openai", base_url=server.base_url, api_model="m",
                      data_dir=str(data_dir), benchmarks=["gsm8k"], limit=8, modes=["tir"], max_new_tokens=64,
                      max_concurrency=4, exec_workers=1, progress=False)
        [metrics] = run_evaluation(str(tmp_path), **kwargs)
        rows = [json.loads(line) for line in open(tmp_path / "evaluate" / "gsm8k" / "tir" / "trajectories.jsonl")]
        assert metrics["n"] == 8 and metrics["request_errors"] == 2 and metrics["correct"] == 6
        failed = [row for row in rows if row["finish"].startswith("error")]
        assert {row["question"] for row in failed} == rejected
        assert all(row["finish"].startswith("error: 400 This model's maximum context length") for row in failed)
        assert all(row["correct"] for row in rows if row not in failed)
        # A re-run asks the failed requests again (the finished ones are resumed, not re-sent).
        accept_all[0] = True
        sent_before = len(server.received)
        [metrics] = run_evaluation(str(tmp_path), **kwargs)
        assert len(server.received) - sent_before == 2
        assert metrics["n"] == 8 and metrics["request_errors"] == 0 and metrics["correct"] == 8


def test_max_tokens_is_clamped_to_the_context_the_server_reports(tokenizer):
    with LoopbackVLLM(tokenizer, "m", max_model_len=300, answer=lambda p: "fine") as server:
        backend = OpenAIBackend(server.base_url, "m", tokenizer=tokenizer, progress=False)
        short, long = "Say hi.", "Count the words: " + "word " * 280
        results = backend.complete([short, long, "x " * 400], Sampling(max_new_tokens=256))
    assert backend.context_length == 300  # learned from /v1/models (vLLM's max_model_len)
    sent = {request["prompt"]: request for request in server.received}
    assert sent[short]["max_tokens"] == 256  # fits: sent as asked
    assert len(sent[long]["ids"]) + sent[long]["max_tokens"] == 300  # clamped to what is left
    assert results[1].finish == "eos" and results[1].text == "fine"
    assert results[2].finish == "length" and "x " * 400 not in sent  # no room: not sent at all


def test_without_a_known_context_the_rejection_is_recorded_not_raised(tokenizer):
    with LoopbackVLLM(tokenizer, "other-name", max_model_len=100, answer=lambda p: "ok") as server:
        backend = OpenAIBackend(server.base_url, "m", tokenizer=tokenizer, progress=False)  # not listed: unknown
        ok, too_long = backend.complete(["hi", "word " * 95], Sampling(max_new_tokens=16))
    assert backend.context_length is None
    assert ok.finish == "eos" and too_long.finish.startswith("error: 400")


def test_the_teacher_does_not_cache_a_failed_request(tokenizer, tmp_path):
    calls = []
    with LoopbackVLLM(tokenizer, "m", answer=lambda p: "ok", reject=lambda p: not calls.append(p) and len(calls) == 1) \
            as server:
        teacher = Teacher(OpenAIBackend(server.base_url, "m", tokenizer=tokenizer, progress=False),
                          tmp_path / "cache.jsonl")
        [first] = teacher.complete(["a question"], Sampling(max_new_tokens=4))
        [second] = teacher.complete(["a question"], Sampling(max_new_tokens=4))
        teacher.close()
    assert first.finish.startswith("error: 400") and second.finish == "eos" and len(calls) == 2


def test_a_server_that_is_not_there_still_fails_loudly(tokenizer):
    import openai

    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", tokenizer=tokenizer, progress=False, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        backend.complete(["hi"], Sampling(max_new_tokens=4))
