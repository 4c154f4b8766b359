"""The benchmark registry: every entry loads into {id, question, answer, source, meta}."""
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mumath.data import SHIPPED_DATA, DataError, load_benchmark, registry

REPO = Path(__file__).resolve().parent.parent

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


def test_missing_field_is_named_with_its_one_based_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"q": "1", "a": "1"}\n\n{"q": "2"}\n')
    extra = {"m": {"splits": {"test": {"local": str(path)}}, "question": "q", "answer": "a"}}
    with pytest.raises(DataError, match=rf"{path}:3: field 'a' missing") as error:
        load_benchmark("m", "test", data_dir=tmp_path, extra=extra)
    assert "it has ['q']" in str(error.value)


def test_json_list_rows_are_named_by_item(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('[{"q": "1", "a": "1"}, {"q": "2"}]')
    extra = {"m": {"splits": {"test": {"local": str(path)}}, "question": "q", "answer": "a"}}
    with pytest.raises(DataError, match=r"item 2\]: field 'a' missing"):
        load_benchmark("m", "test", extra=extra)


def test_absolute_local_path_needs_no_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MUMATH_DATA_DIR", raising=False)
    path = tmp_path / "abs.jsonl"
    path.write_text(json.dumps({"q": "What is 1+1?", "a": "2"}) + "\n")
    extra = {"abs": {"splits": {"test": {"local": str(path)}}, "question": "q", "answer": "a"}}
    [record] = load_benchmark("abs", "test", data_dir=None, extra=extra)
    assert record["answer"] == "2"


def test_multiple_choice_from_config_only(tmp_path):
    """Options as one string and a gold letter: no code, graded by letter, (C), text or value."""
    from mumath.grading import is_equivalent

    path = tmp_path / "mc.jsonl"
    rows = [{"q": "Which is largest?", "options": "A) 3 B) 5 C) 10", "gold": "C"},
            {"q": "Pick two.", "options": ["(A) 1", "(B) 2"], "gold": "B"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    extra = {"mc": {"splits": {"test": {"local": str(path)}}, "question": "{q} Options: {options}",
                    "answer": "gold", "choices": "options"}}
    first, second = load_benchmark("mc", "test", extra=extra)
    assert first["meta"]["choices"] == ["3", "5", "10"] and second["meta"]["choices"] == ["1", "2"]
    for pred in ("C", "(C)", "\\text{(C)}", "10", "C) 10"):
        assert is_equivalent(pred, first["answer"], first["meta"]["choices"]), pred
    for pred in ("A", "5", "(B)"):
        assert not is_equivalent(pred, first["answer"], first["meta"]["choices"]), pred
    assert is_equivalent("2", second["answer"], second["meta"]["choices"])


def test_unknown_benchmark_and_split():
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("nope")
    with pytest.raises(DataError, match="no split"):
        load_benchmark("gsm8k", "validation")


def test_hub_path_fails_offline_naming_the_dataset():
    code = ("from mumath.data import load_benchmark\n"
            "try:\n    load_benchmark('math', 'train', data_dir=None)\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    env = {k: v for k, v in os.environ.items() if k != "MUMATH_DATA_DIR"}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "DataError" in out and "EleutherAI/hendrycks_math" in out


def test_benchmark_without_any_copy_says_where_it_looked(monkeypatch):
    monkeypatch.delenv("MUMATH_DATA_DIR", raising=False)
    extra = {"gone": {"splits": {"test": {"local": "gone/test.jsonl"}}, "question": "q", "answer": "a"}}
    with pytest.raises(DataError, match="no local copy .*benchmark_data/gone/test.jsonl.*no hub source"):
        load_benchmark("gone", "test", data_dir=None, extra=extra)


# --- the data shipped inside the package -------------------------------------------------------------

SHIPPED_FILES = sorted(SHIPPED_DATA.rglob("*.gz"))


def test_every_paper_benchmark_and_the_default_seeds_are_shipped():
    names = {str(path.relative_to(SHIPPED_DATA))[:-3] for path in SHIPPED_FILES}
    assert {"gsm8k/train.jsonl", "gsm8k/test.jsonl", "math/test.jsonl", "math500/test.jsonl", "gsm-hard/test.jsonl",
            "svamp/test.jsonl", "asdiv/test.jsonl", "mawps/test.jsonl", "tabmwp/test1k.json"} <= names
    assert sum(path.stat().st_size for path in SHIPPED_FILES) < 6 * 2**20, "keep the wheel small"


def test_shipped_files_match_their_sha256():
    sums = dict(reversed(line.split()) for line in (SHIPPED_DATA / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {str(path.relative_to(SHIPPED_DATA))[:-3] for path in SHIPPED_FILES}
    for path in SHIPPED_FILES:
        with gzip.open(path, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == sums[str(path.relative_to(SHIPPED_DATA))[:-3]]
    readme = (SHIPPED_DATA / "README.md").read_text()
    for folder in {path.parent.name for path in SHIPPED_FILES}:
        assert f"`{folder}/" in readme, f"the data README must name the source and license of {folder}"


def test_shipped_files_are_package_data():
    """pyproject's package-data globs must carry every shipped file into a wheel."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mumath"]
    for path in SHIPPED_FILES + [SHIPPED_DATA / "README.md", SHIPPED_DATA / "SHA256SUMS"]:
        name = str(path.relative_to(REPO / "mumath"))
        assert any(fnmatch.fnmatch(name, pattern) and name.count("/") == pattern.count("/") for pattern in patterns), name


def test_defaults_work_without_any_data_folder(monkeypatch, tmp_path):
    """No data_dir, no $MUMATH_DATA_DIR, no ../shared: every benchmark the defaults use still loads, and the
    manifest can tell that the rows came from the shipped copy."""
    from mumath.manifest import Manifest

    monkeypatch.delenv("MUMATH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    inputs = []
    for name, split in [("gsm8k", "train"), ("math", "train_offline"), ("asdiv", "test"), ("mawps", "test"),
                        ("tabmwp", "test"), ("gsm8k", "test")]:
        assert load_benchmark(name, split, data_dir=None, limit=2, inputs=inputs)
    origins = Manifest.data_origins(inputs, tmp_path)
    assert origins["mumath/benchmark_data/math500/test.jsonl.gz"] == "shipped"
    assert set(origins.values()) == {"shipped"} and len(origins) == 7


def test_data_dir_wins_over_the_shipped_copy(tmp_path):
    (tmp_path / "svamp").mkdir()
    row = {"Body": "Mine.", "Question": "How many?", "Answer": 7, "ID": "x", "Equation": "", "Type": ""}
    (tmp_path / "svamp" / "test.jsonl").write_text(json.dumps(row) + "\n")
    inputs = []
    [record] = load_benchmark("svamp", "test", data_dir=tmp_path, inputs=inputs)
    assert record["answer"] == "7" and inputs == [str((tmp_path / "svamp" / "test.jsonl").resolve())]

