"""Corpus import (mumath/corpus.py): fixtures written in each documented format, through the filter."""
import json
import sys
import types
from pathlib import Path

import pytest

from mumath import corpus
from mumath.corpus import CorpusError, import_corpus, render, split_blocks
from mumath.executor import SandboxPool
from mumath.records import read_jsonl
from mumath.tir import format_output

FIXTURES = Path(__file__).with_name("fixtures") / "corpora"


def at_fixture(name):
    """The registry's own entry for `name`, reading its fixture file."""
    return {name: dict(corpus.builtin_registry()[name], local=str(FIXTURES / f"{name}.jsonl"))}


def load(name, **kwargs):
    return import_corpus(name, extra=at_fixture(name), progress=False, **kwargs)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout=5) as sandbox:
        yield sandbox


def test_mumath_code_rows_are_in_the_tool_loops_format():
    by_stage, counts = load("mumath-code")
    assert counts["by_stage"] == {"cot": 1, "tir": 2}
    row = by_stage["tir"][0]
    solution = row["messages"][-1]["content"]
    # exactly what the tool loop writes: the code block, then format_output of its output
    assert "```python\napril = 48\nmay = april // 2\nprint(april + may)\n```\n" + format_output("72") in solution
    assert row["messages"][0]["role"] == "user" and "Natalia sold clips" in row["messages"][0]["content"]
    assert row["answer"] == "72" and row["pred"] == "72" and row["correct"] is True
    assert row["executions"] == 1 and row["execution_errors"] == 0 and row["prefix_cot"] is True
    assert row["teacher"] == "corpus:mumath-code" and row["stage"] == "tir" and row["finish"] == "eos"
    assert by_stage["cot"][0]["messages"][-1]["content"].endswith("\\boxed{5}.")


def test_tora_format_skips_the_system_turn_and_keeps_meta():
    by_stage, _ = load("tora")
    first, second = by_stage["tir"]
    assert first["question"] == "A fair coin is flipped once. What is the probability of heads?"
    assert first["meta"] == {"dataset": "math", "level": "Level 2"} and first["source_id"] == "17"
    assert first["correct"] is True  # 1/2 against \frac{1}{2}
    assert second["answer"] == "10" and second["correct"] is True


def test_numina_tir_answer_is_the_solutions_own_box():
    by_stage, counts = load("numina-tir")
    assert counts["by_stage"] == {"cot": 1, "tir": 1}
    assert by_stage["tir"][0]["answer"] == "55" and by_stage["cot"][0]["answer"] == "21"
    assert "\n\n```python" not in by_stage["tir"][0]["messages"][-1]["content"]  # blank line normalized


def test_openmathinstruct_markers_and_where():
    by_stage, counts = load("openmathinstruct-1")
    assert counts["dropped"] == {"excluded_by_where": 1} and counts["by_stage"] == {"tir": 2}
    solution = by_stage["tir"][0]["messages"][-1]["content"]
    assert "<llm-code>" not in solution and "```python\nboxes = 3" in solution
    assert format_output("36") in solution
    assert by_stage["tir"][0]["meta"]["dataset"] == "gsm8k"
    two, _ = load("openmathinstruct-2")
    assert list(two) == ["cot"] and two["cot"][0]["correct"] is True


def test_repeated_question_gets_one_question_id_and_numbered_samples(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "mumath-code.jsonl").read_text().splitlines()]
    path = tmp_path / "twice.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows[:1] * 2) + "\n")
    entry = dict(corpus.builtin_registry()["mumath-code"], local=str(path))
    by_stage, _ = import_corpus("mine", extra={"mine": entry}, progress=False)
    a, b = by_stage["tir"]
    assert a["question_id"] == b["question_id"] and (a["sample"], b["sample"]) == (0, 1)
    assert a["id"] != b["id"]


def test_split_and_render_round_trip():
    text = "Reason first.\n```python\nprint(1)\n```\n```output\n1\n```\nThen \\boxed{1}."
    parts = split_blocks(text)
    assert [kind for kind, _ in parts] == ["text", "code", "output", "text"]
    assert render(parts) == text
    with pytest.raises(CorpusError, match="never closes"):
        split_blocks("```python\nprint(1)\n")


def test_recorded_errors_are_counted():
    assert corpus.output_failed("Traceback (most recent call last):\n  File x\nNameError: name 'y'") == (True, False)
    assert corpus.output_failed("ZeroDivisionError: division by zero") == (True, False)
    assert corpus.output_failed("timeout") == (False, True)
    assert corpus.output_failed("42") == (False, False)


def test_reexecute_check_drops_a_wrong_recorded_output(pool):
    # the ToRA fixture's second row claims print(2 * 5) printed 11
    by_stage, counts = load("tora", executor=pool, reexecute_mode="check")
    assert counts["dropped"] == {"output_differs": 1}
    assert [row["source_id"] for row in by_stage["tir"]] == ["17"]
    assert counts["reexecuted_blocks"]["matching"] == 1 and counts["reexecuted_blocks"]["differing"] == 1


def test_reexecute_replace_writes_the_sandboxs_output(pool):
    by_stage, counts = load("tora", executor=pool, reexecute_mode="replace")
    assert counts["by_stage"] == {"tir": 2}
    assert format_output("10") in by_stage["tir"][1]["messages"][-1]["content"]
    assert format_output("11") not in by_stage["tir"][1]["messages"][-1]["content"]


def test_bad_rows_and_entries_name_where(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "What is 1+1?", "solution": "2 \\boxed{2}"}) + "\n" +
                    json.dumps({"problem": "What is 2+2?"}) + "\n")
    entry = {"local": str(path), "question": "problem", "solution": "solution"}
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: field 'solution' missing"):
        import_corpus("bad", extra={"bad": entry}, progress=False)
    with pytest.raises(CorpusError, match=r"extra_corpora.bad: unknown field\(s\) \['solutions'\]"):
        corpus.registry({"bad": dict(entry, solutions="x")})
    with pytest.raises(CorpusError, match="extra_corpora.bad.stage"):
        corpus.registry({"bad": dict(entry, stage="sft")})
    with pytest.raises(CorpusError, match="unknown corpus 'nope'"):
        import_corpus("nope", progress=False)
    with pytest.raises(CorpusError, match="no local copy"):
        corpus.resolve_corpus("mumath-code", data_dir=tmp_path)


def test_hub_path_up_to_the_download(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        rows = [json.loads(line) for line in (FIXTURES / "numina-tir.jsonl").read_text().splitlines()]
        return iter(rows * 3)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    inputs = []
    by_stage, counts = import_corpus("numina-tir", data_dir="/nonexistent", limit=3, inputs=inputs, progress=False)
    assert calls == [("AI-MO/NuminaMath-TIR", None, "train", True)]  # streamed: a limit downloads no more
    assert counts["read"] == 3 and inputs == ["hf://datasets/AI-MO/NuminaMath-TIR@train"]

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(CorpusError, match="could not load 'AI-MO/NuminaMath-TIR'.*local copy"):
        import_corpus("numina-tir", data_dir="/nonexistent", progress=False)


def test_imported_rows_go_through_the_filter(tmp_path, data_dir):
    """Decontamination, dedupe and the answer check treat imported rows like synthesized ones."""
    from mumath.data import load_benchmark
    from mumath.filter import FilterConfig, run_filter
    from mumath.synthesize import run_synthesize

    test_question = load_benchmark("gsm8k", "test", data_dir, limit=1)[0]["question"]
    rows = [json.loads(line) for line in (FIXTURES / "mumath-code.jsonl").read_text().splitlines()]
    leaked = json.loads(json.dumps(rows[1]))
    leaked["messages"][0]["content"] = test_question  # a GSM8K test question in the corpus
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows + [rows[0], leaked]))
    entry = dict(corpus.builtin_registry()["mumath-code"], local=str(path))
    run_dir = tmp_path / "run"
    stats = run_synthesize(run_dir, None, None, solution_source="corpus", corpora=["mine"],
                           extra_corpora={"mine": entry})
    assert stats["corpora"]["mine"]["imported"] == 5 and stats["rows_by_source"]["tir"] == {"corpus:mine": 4}
    assert (run_dir / "synthesize" / "stats.json").exists()
    result = run_filter(run_dir, data_dir=data_dir, decontaminate_benchmarks=["gsm8k"],
                        config=FilterConfig(max_tokens=None), progress=False)
    dropped = {row["filter"] for row in read_jsonl(run_dir / "filter" / "dropped.jsonl")}
    assert {"contaminated", "duplicate_solution"} <= dropped
    kept = read_jsonl(run_dir / "filter" / "stage2.jsonl")
    assert len(kept) == 2 and all(row["teacher"] == "corpus:mine" for row in kept)
    assert len(read_jsonl(run_dir / "filter" / "stage1.jsonl")) == 1
    assert result is not None


def write_params(tmp_path, data_dir):
    params = tmp_path / "p.yaml"
    params.write_text(f"""run: corpus-test
data_dir: {data_dir}
steps:
  synthesize: {{solution_source: corpus, corpora: [mumath-code]}}
  filter: {{}}
  stage1: {{}}
  stage2: {{}}
""")
    return params


def test_check_and_estimate_count_the_corpus(tmp_path):
    from mumath.check import check_plan
    from mumath.config import ParamsError, load_params
    from mumath.estimate import estimate

    (tmp_path / "mumath-code").mkdir()
    (tmp_path / "mumath-code" / "train.jsonl").write_text((FIXTURES / "mumath-code.jsonl").read_text())
    params = write_params(tmp_path, tmp_path)
    notes = check_plan(params, load_params(params)[1])
    assert any("corpus mumath-code: 3 rows" in note for note in notes)
    assert not any("gsm8k:train" in note for note in notes)  # a corpus brings its own questions
    result = estimate(params, assumptions={"filter_keep_share": 1.0})
    assert result["training"]["stage1"]["rows"] == 1 and result["training"]["stage2"]["rows"] == 2
    assert result["teacher"] == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(params.read_text().replace("corpora: [mumath-code]", "corpora: [mumath-code], corpus_reexecute: always"))
    with pytest.raises(ParamsError, match="corpus_reexecute.*'always'"):
        check_plan(bad, load_params(bad)[1])
    missing = write_params(tmp_path, tmp_path / "empty")
    with pytest.raises(ParamsError, match="steps.synthesize.corpora.*no local copy"):
        check_plan(missing, load_params(missing)[1])


@pytest.mark.slow  # two notebooks through papermill: ~70 s on 2 loaded cores
def test_params_file_runs_the_import_and_the_filter(tmp_path):
    """`python -m mumath run` on a params file: the synthesize notebook imports, the filter notebook filters."""
    from mumath.runner import run

    (tmp_path / "mumath-code").mkdir()
    (tmp_path / "mumath-code" / "train.jsonl").write_text((FIXTURES / "mumath-code.jsonl").read_text())
    params = tmp_path / "p.yaml"
    params.write_text(f"""run: corpus-e2e
data_dir: {tmp_path}
steps:
  synthesize: {{solution_source: corpus, corpora: [mumath-code], corpus_reexecute: check}}
  filter: {{decontaminate_benchmarks: [gsm8k]}}
""")
    run_dir = run(params, outputs=tmp_path / "outputs", log_output=False)
    stats = json.loads((run_dir / "synthesize" / "stats.json").read_text())
    assert stats["corpora"]["mumath-code"]["reexecuted_blocks"]["matching"] == 2
    assert len(read_jsonl(run_dir / "filter" / "stage2.jsonl")) == 2
    assert len(read_jsonl(run_dir / "filter" / "stage1.jsonl")) == 1


def test_the_same_question_in_two_corpora_is_one_question():
    from mumath.corpus import import_corpora

    extra = dict(at_fixture("openmathinstruct-1"))
    extra["omi-copy"] = extra["openmathinstruct-1"]
    by_stage, counts = import_corpora(["openmathinstruct-1", "omi-copy"], extra=extra, progress=False)
    ids = [(row["question_id"], row["sample"], row["teacher"]) for row in by_stage["tir"]]
    assert ids[0][0] == ids[2][0] and ids[0][2] != ids[2][2]
    assert len({row["id"] for row in by_stage["tir"]}) == 4  # row ids stay unique across corpora
