"""The benchmark registry: every entry loads into {id, question, answer, source, meta}."""
import json
import os
import subprocess
import sys

import pytest

from mumath.data import DataError, load_benchmark, registry

EXPECTED = {  # (name, split): (rows, first answer)
    ("gsm8k", "train"): (7473, "72"), ("gsm8k", "test"): (1319, "18"), ("math", "test"): (5000, "2"),
    ("math", "train_offline"): (4500, "2"), ("math500", "test"): (500, "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("gsm-hard", "test"): (1319, "-9867630"), ("svamp", "test"): (1000, "145"), ("asdiv", "test"): (2215, "9"),
    ("mawps", "test"): (2065, "43"), ("mawps-addsub", "test"): (395, "43"), ("mawps-singleeq", "test"): (508, "43"),
    ("mawps-singleop", "test"): (562, "14"), ("mawps-multiarith", "test"): (600, "39"),
    ("tabmwp", "test"): (1000, "84"),
}


@pytest.mark.parametrize("name,split", sorted(EXPECTED))
def test_every_benchmark_loads(name, split, data_dir):
    records = load_benchmark(name, split, data_dir=data_dir)
    rows, first_answer = EXPECTED[(name, split)]
    assert len(records) == rows and records[0]["answer"] == first_answer
    assert len({record["id"] for record in records}) == rows
    for record in records[:50]:
        assert set(record) == {"id", "question", "answer", "source", "meta"} and record["question"]


def test_offline_math_train_split_excludes_math500(data_dir):
    train = {r["question"] for r in load_benchmark("math", "train_offline", data_dir=data_dir)}
    held_out = {r["question"] for r in load_benchmark("math500", "test", data_dir=data_dir)}
    assert not train & held_out


def test_tabmwp_renders_the_table_and_choices(data_dir):
    records = load_benchmark("tabmwp", "test", data_dir=data_dir)
    choice = next(r for r in records if r["meta"].get("choices"))
    assert "|" in choice["question"] and "Options:" in choice["question"]
    assert choice["answer"] in choice["meta"]["choices"]


def test_limit_is_a_seeded_sample(data_dir):
    a = load_benchmark("gsm8k", "test", data_dir=data_dir, limit=5, seed=1)
    b = load_benchmark("gsm8k", "test", data_dir=data_dir, limit=5, seed=1)
    c = load_benchmark("gsm8k", "test", data_dir=data_dir, limit=5, seed=2)
    assert [r["id"] for r in a] == [r["id"] for r in b] != [r["id"] for r in c]


def test_a_new_benchmark_from_config_only(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"q": "What is 2+2?", "sol": "#### 4", "key": "a"}) + "\n")
    extra = {"mine": {"splits": {"test": {"local": str(path)}}, "question": "{q}", "answer": "sol",
                      "answer_parser": "after_hash", "id": "key"}}
    [record] = load_benchmark("mine", "test", data_dir=tmp_path, extra=extra)
    assert record == {"id": "mine/test/a", "question": "What is 2+2?", "answer": "4", "source": "mine/test",
                      "meta": {}}


@pytest.mark.parametrize("entry,message", [
    ({"splits": {"test": {"local": "x.jsonl"}}, "question": "q"}, "missing field 'answer'"),
    ({"splits": {"test": {"local": "x.jsonl"}}, "question": "q", "answer": "a", "answer_parse": "x"}, "unknown field"),
    ({"splits": {"test": {"local": "x.jsonl"}}, "question": "q", "answer": "a", "answer_parser": "x"}, "answer_parser"),
])
def test_bad_entries_are_named(entry, message):
    with pytest.raises(DataError, match=message):
        registry({"mine": entry})


def test_bad_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "1", "a": "1"}\n{"q": oops}\n')
    extra = {"bad": {"splits": {"test": {"local": str(path)}}, "question": "q", "answer": "a"}}
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_benchmark("bad", "test", data_dir=tmp_path, extra=extra)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"q": "1"}\n')
    extra = {"m": {"splits": {"test": {"local": str(path)}}, "question": "q", "answer": "a"}}
    with pytest.raises(DataError, match="field 'a' missing"):
        load_benchmark("m", "test", data_dir=tmp_path, extra=extra)


def test_unknown_benchmark_and_split():
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("nope")
    with pytest.raises(DataError, match="no split"):
        load_benchmark("gsm8k", "validation")


def test_hub_path_fails_offline_naming_the_dataset():
    code = ("from mumath.data import load_benchmark\n"
            "try:\n    load_benchmark('gsm8k', 'test', data_dir=None)\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    env = {k: v for k, v in os.environ.items() if k != "MUMATH_DATA_DIR"}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "DataError" in out and "openai/gsm8k" in out


def test_benchmark_without_hub_copy_asks_for_data_dir(monkeypatch):
    monkeypatch.delenv("MUMATH_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no hub source"):
        load_benchmark("asdiv", "test", data_dir=None)
