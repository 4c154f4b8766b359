"""Filtering (step 3): each filter on adversarial rows, the funnel, decontamination, and the evaluation flag."""
import json

import pytest

from mumath.decontaminate import ContaminationIndex, evaluation_contamination, normalize_text
from mumath.filter import (FilterConfig, FilterError, TokenCounter, filter_rows, format_problem, run_filter,
                           vote)
from mumath.grading import extract_answer

GOOD_TIR = ("First we add the two numbers given in the question together.\n```python\nprint(2 + 3)\n```\n"
            "```output\n5\n```\nSo the answer is \\boxed{5}.")
FAILED_LAST = ("First we add the two numbers given in the question together.\n```python\nprint(x + 3)\n```\n"
               "```output\nNameError: name 'x' is not defined\n```\nSo the answer is \\boxed{5}.")
FIXED = ("First we add the two numbers given in the question together.\n```python\nprint(x + 3)\n```\n"
         "```output\nNameError: name 'x' is not defined\n```\nLet me define x first.\n```python\nx = 2\n"
         "print(x + 3)\n```\n```output\n5\n```\nSo the answer is \\boxed{5}.")
TIMED_OUT_LAST = ("First we add the two numbers given in the question together.\n```python\nwhile True: pass\n```\n"
                  "```output\nTimeoutError: execution timed out\n```\nSo the answer is \\boxed{5}.")


def make_row(qid, stage, text, answer="5", method="seed", sample=0, question=None, **fields):
    row = {"id": f"{qid}/{stage}/{sample}", "question_id": qid, "stage": stage, "sample": sample,
           "question": question or f"Solve problem number {qid} carefully.",
           "answer": answer, "pred": extract_answer(text), "messages": [
               {"role": "user", "content": "Solve: " + (question or qid)}, {"role": "assistant", "content": text}],
           "teacher": "test", "source": "test", "seed_id": fields.pop("seed_id", qid), "method": method,
           "rounds": 1, "finish": "eos", "executions": 0, "execution_errors": 0, "errors_fixed": 0,
           "timeouts": 0, "prefix_cot": None}
    if stage == "tir":
        row.update(executions=text.count("```output"), rounds=text.count("```output") + 1, prefix_cot=True)
    row.update(fields)
    return row


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(tmp_path, cot=(), tir=(), config=None, **kwargs):
    files = {}
    if cot:
        files["cot"] = write(tmp_path / "cot.jsonl", cot)
    if tir:
        files["tir"] = write(tmp_path / "tir.jsonl", tir)
    out = tmp_path / "filter"
    stats = filter_rows(files, out, config or FilterConfig(), progress=False, **kwargs)
    dropped = {row["id"]: row for row in map(json.loads, (out / "dropped.jsonl").read_text().splitlines())}
    kept = {stage: [json.loads(line)["id"] for line in (out / f"{name}.jsonl").read_text().splitlines()]
            for stage, name in (("cot", "stage1"), ("tir", "stage2")) if stage in files}
    return stats, kept, dropped


# ------------------------------------------------------------------------------------------ validity

def test_last_execution_failed_is_dropped_but_a_fixed_error_is_kept():
    config = FilterConfig()
    assert format_problem(make_row("q", "tir", GOOD_TIR), "tir", config) is None
    failed = make_row("q", "tir", FAILED_LAST, execution_errors=1)
    assert format_problem(failed, "tir", config) == "last execution failed"
    fixed = make_row("q", "tir", FIXED, execution_errors=1, errors_fixed=1)
    assert format_problem(fixed, "tir", config) is None
    timed_out = make_row("q", "tir", TIMED_OUT_LAST, timeouts=1)
    assert format_problem(timed_out, "tir", config) == "last execution timed out"
    assert "max_rounds" in format_problem(fixed, "tir", FilterConfig(max_rounds=1))


def test_correct_solution_without_boxed_is_dropped():
    cot = make_row("q", "cot", "2 + 3 = 5. The answer is 5.")
    assert cot["pred"] == "5", "the grader would call it correct"
    assert format_problem(cot, "cot", FilterConfig()) == "no final \\boxed{} answer"
    tir = make_row("q", "tir", GOOD_TIR.replace("\\boxed{5}", "5"))
    assert "no \\boxed{} answer after the last execution" == format_problem(tir, "tir", FilterConfig())
    # A box written before the code ran is not a final answer.
    early = make_row("q", "tir", "I guess \\boxed{5} but let me verify this with some code here.\n"
                     "```python\nprint(5)\n```\n```output\n5\n```\nConfirmed.")
    assert "after the last execution" in format_problem(early, "tir", FilterConfig())


def test_other_validity_checks():
    config = FilterConfig()
    assert format_problem(make_row("q", "cot", "```python\nprint(5)\n```\n\\boxed{5}"), "cot", config) \
        == "has a code block"
    assert "end of turn" in format_problem(make_row("q", "tir", GOOD_TIR, finish="length"), "tir", config)
    assert format_problem(make_row("q", "tir", "It is 5, \\boxed{5}."), "tir", config) == "no code execution"
    no_prefix = make_row("q", "tir", GOOD_TIR.replace("First we add the two numbers given in the question "
                                                      "together.\n", "Code:\n"))
    assert "prefix CoT" in format_problem(no_prefix, "tir", config)
    assert format_problem(no_prefix, "tir", FilterConfig(require_prefix_cot=False)) is None


# ------------------------------------------------------------------------------------- pseudo answers

def test_vote_groups_equivalent_answers_and_a_tie_has_no_winner():
    assert vote(["0.5", "\\frac{1}{2}", "1/2", "3"]) == ("0.5", 3, 4)
    assert vote(["1,000", "1000", "7"])[0] == "1,000"
    assert vote(["4", "4", "7", "7"])[0] is None, "a tie has no pseudo answer"
    assert vote(["4", "7", "9"])[0] is None, "a single vote is below min_votes"
    assert vote(["4", "4", "7", "8", "9"], min_share=0.5)[0] is None, "40 % is below min_share"
    assert vote(["4", "4", "7", "8", "9"], min_share=0.4)[0] == "4"
    assert vote([None, "", None]) == (None, 0, 0)


def test_pseudo_answers_keep_agreeing_solutions_and_measure_their_precision(tmp_path):
    tir = [make_row("alt", "tir", GOOD_TIR.replace("5", n), answer=None, method="alter", sample=i)
           for i, n in enumerate(["6", "6.0", "7"])]
    tie = [make_row("tie", "tir", GOOD_TIR.replace("5", n), answer=None, method="alter", sample=i)
           for i, n in enumerate(["6", "7", "6.0", "7.0"])]
    referenced = [make_row("ref", "tir", GOOD_TIR), make_row("ref", "tir", FIXED, sample=1, execution_errors=1,
                                                             errors_fixed=1)]
    stats, kept, dropped = run(tmp_path, tir=tir + tie + referenced)
    assert kept["tir"] == ["alt/tir/0", "alt/tir/1", "ref/tir/0", "ref/tir/1"]
    assert dropped["alt/tir/2"]["filter"] == "answer" and "pseudo answer '6'" in dropped["alt/tir/2"]["detail"]
    assert all(dropped[f"tie/tir/{i}"]["detail"].startswith("no pseudo answer") for i in range(4))
    pseudo = stats["pseudo_answers"]
    assert pseudo["questions_without_reference"] == 2 and pseudo["with_pseudo_answer"] == 1
    assert pseudo["reference_questions_with_a_vote_winner"] == 1 and pseudo["precision_proxy"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "filter" / "stage2.jsonl").read_text().splitlines()]
    assert rows[0]["answer_source"] == "pseudo" and rows[0]["pseudo_answer"] == "6"
    assert rows[-1]["answer_source"] == "reference"


def test_reference_match_uses_the_evaluation_grader_with_choices(tmp_path):
    cot = [make_row("a", "cot", "Half of it: \\boxed{\\frac{1}{2}}", answer="0.5"),
           make_row("b", "cot", "So \\boxed{6}.", answer="5"),
           make_row("c", "cot", "It is option \\boxed{B}.", answer="blue", choices=["red", "blue"])]
    _, kept, dropped = run(tmp_path, cot=cot)
    assert kept["cot"] == ["a/cot/0", "c/cot/0"]
    assert dropped["b/cot/0"]["filter"] == "answer"
    # Synthesis's verdict (`correct`, the same grader) is reused unless regrade is asked for.
    stale = [dict(cot[1], correct=True), dict(cot[0], correct=False)]
    assert run(tmp_path, cot=stale)[1]["cot"] == ["b/cot/0"]
    assert run(tmp_path, cot=stale, config=FilterConfig(regrade=True))[1]["cot"] == ["a/cot/0"]


# --------------------------------------------------------------------------------------------- dedupe

def test_near_duplicate_solutions_differing_in_whitespace_and_punctuation(tmp_path):
    text = ("Tom starts with 2 apples. He then gets 3 more apples from his friend, so he has 2 + 3 = 5 apples "
            "in total at the end of the day. The answer is \\boxed{5}.")
    twin = text.replace(". ", ".   ").replace(",", " ;").replace("Tom", "tom")
    near = text.replace("at the end of the day", "at the end of that day")
    other_question = make_row("other", "cot", text)
    rows = [make_row("q", "cot", text), make_row("q", "cot", twin, sample=1),
            make_row("q", "cot", near, sample=2), other_question]
    _, kept, dropped = run(tmp_path, cot=rows, config=FilterConfig(dedup_threshold=0.7))
    assert kept["cot"] == ["q/cot/0", "other/cot/0"], "the same solution of another question is not a duplicate"
    assert dropped["q/cot/1"]["filter"] == "duplicate_solution" and "same normalized" in dropped["q/cot/1"]["detail"]
    assert dropped["q/cot/2"]["filter"] == "duplicate_solution" and "near duplicate" in dropped["q/cot/2"]["detail"]


def test_duplicate_questions_but_not_alterations_with_new_numbers(tmp_path):
    seed = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
    rephrased = seed.replace(", and then", " and then").replace("  ", " ").upper()
    near = seed.replace("in April and May", "in April and in May")
    altered = seed.replace("48", "60")
    rows = [make_row("seed", "cot", "\\boxed{72}", answer="72", question=seed),
            make_row("seed/rephrase/0", "cot", "\\boxed{72}", answer="72", question=rephrased, method="rephrase"),
            make_row("seed/rephrase/1", "cot", "\\boxed{72}", answer="72", question=near, method="rephrase"),
            make_row("seed/alter/0", "cot", "\\boxed{90}", answer="90", question=altered, method="alter")]
    _, kept, dropped = run(tmp_path, cot=rows, config=FilterConfig(dedup_threshold=0.7))
    assert kept["cot"] == ["seed/cot/0", "seed/alter/0/cot/0"]
    assert dropped["seed/rephrase/0/cot/0"]["detail"] == "same text as question seed"
    assert dropped["seed/rephrase/1/cot/0"]["detail"] == "near duplicate of question seed"


def test_cap_per_question_and_stage(tmp_path):
    rows = [make_row("q", "cot", f"Step {'a ' * i}then \\boxed{{5}}", sample=i) for i in range(5)]
    _, kept, dropped = run(tmp_path, cot=rows, config=FilterConfig(max_per_question=2, dedup_threshold=0.95))
    assert kept["cot"] == ["q/cot/0", "q/cot/1"] and {d["filter"] for d in dropped.values()} == {"cap"}


# --------------------------------------------------------------------------------------------- length

class WordCounter:
    """A stand-in tokenizer: one token a word, 3 for the template."""
    batch_size = 2

    def upper_bound(self, row):
        return 3 + sum(len(m["content"].split()) for m in row["messages"])

    def count(self, rows):
        return [3 + sum(len(m["content"].split()) for m in row["messages"]) for row in rows]


def test_length_limit(tmp_path):
    rows = [make_row("q", "cot", "short \\boxed{5}"), make_row("r", "cot", "long " * 50 + "\\boxed{5}")]
    _, kept, dropped = run(tmp_path, cot=rows, config=FilterConfig(max_tokens=20), counter=WordCounter())
    assert kept["cot"] == ["q/cot/0"] and dropped["r/cot/0"]["filter"] == "length"


def test_token_count_matches_the_chat_template(embedded_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    rows = [make_row("q", "tir", GOOD_TIR), make_row("r", "cot", "Two plus three is five: \\boxed{5}.")]
    counter = TokenCounter(tokenizer)
    for row, count in zip(rows, counter.count(rows)):
        assert count == len(tokenizer.apply_chat_template(row["messages"], tokenize=True,
                                                          return_dict=True)["input_ids"])
        assert count <= counter.upper_bound(row) < 4 * count


# ---------------------------------------------------------------------------------- decontamination

def test_reworded_gsm8k_test_question_with_1000_written_differently_is_caught(data_dir):
    from mumath.data import load_benchmark

    index = ContaminationIndex(n=13)
    index.add("gsm8k", load_benchmark("gsm8k", "test", data_dir))
    original = next(r for r in index.test_rows if "flipping a house" in r[2])[2]
    assert "$80,000" in original
    reworded = ("Josh is flipping a house. He buys a house for $80000 and then puts in $50000 in repairs, which "
                "raised its value by 150 percent. What profit did he make?")
    assert normalize_text(reworded) != normalize_text(original)
    found = index.lookup(reworded)
    assert found["gsm8k"]["match"] == "ngram" and found["gsm8k"]["test_question"] == original
    assert index.lookup(original.replace("80,000", "80000"))["gsm8k"]["match"] == "exact"
    assert index.lookup("Josh buys a boat for $80000. How much does it cost per year over 10 years?") == {}


SVAMP_LIKE = ("Winter is almost here and most animals are migrating to warmer countries. There are 41 bird "
             "families living near the mountain. If 35 bird families flew away to asia and 62 bird families flew "
             "away to africa, how many more bird families flew away to africa than those that flew away to asia?")


def test_reordered_and_renamed_test_questions_are_caught_by_the_bag_check():
    """Issue 20: short test questions whose sentences are reordered escape every 13-gram."""
    test = [{"id": "svamp/test/0", "question": "Tom has 12 marbles. He gives 5 marbles to his sister Anna. His "
                                               "father then buys him 9 new marbles. How many marbles does Tom "
                                               "have now?"},
            {"id": "gsm8k/test/0", "question": "Lisa bakes 24 cookies. She eats 3 of them. Her brother eats 6 "
                                               "more. How many cookies are left?"}]
    index = ContaminationIndex(n=13)
    index.add("bench", test)
    reordered = ("How many marbles does Tom have now? His father then buys him 9 new marbles. He gives 5 marbles "
                 "to his sister Anna. Tom has 12 marbles.")
    renamed = "How many cookies are left? Her brother eats 6 more. Maya bakes 24 cookies. She eats 3 of them."
    ngram_only = ContaminationIndex(n=13, bag_jaccard=None)
    ngram_only.add("bench", test)
    for question, source in ((reordered, "svamp/test/0"), (renamed, "gsm8k/test/0")):
        assert ngram_only.lookup(question) == {}, "the 13-gram check alone misses it"
        found = index.lookup(question)["bench"]
        assert found["match"] == "bag" and found["test_id"] == source


def test_unrelated_questions_pass_the_bag_check(data_dir):
    from mumath.data import load_benchmark

    index = ContaminationIndex(n=13)
    index.add("gsm8k", load_benchmark("gsm8k", "test", data_dir))
    index.add("svamp", load_benchmark("svamp", "test", data_dir))
    train = load_benchmark("gsm8k", "train", data_dir)[:1500]
    assert [row["id"] for row in train if index.lookup(row["question"])] == []
    # Same words, other numbers: another problem.
    assert index.lookup(SVAMP_LIKE.replace("35", "36")) == {}
    # LaTeX-heavy siblings are left to the exact and n-gram checks (their bags are alike, their problems not).
    index.add("math500", [{"id": "m/0", "question": "Compute $\\arcsin \\left( -\\frac{1}{2} \\right).$  "
                                                    "Express your answer in radians."}])
    assert index.lookup("Compute $\\arccos \\left( -\\frac{1}{2} \\right).$  Express your answer in radians.") == {}


def test_math_train_offline_is_contaminated_for_math_and_clean_for_math500(data_dir, tmp_path):
    from mumath.data import load_benchmark

    index = ContaminationIndex(n=13)
    index.add("math", load_benchmark("math", "test", data_dir))
    index.add("math500", load_benchmark("math500", "test", data_dir))
    seeds = load_benchmark("math", "train_offline", data_dir)
    hits = [index.lookup(seed["question"]) for seed in seeds]
    assert all(hit.get("math", {}).get("match") == "exact" for hit in hits)
    # Six are sibling problems of MATH500 ones: same setup and numbers, another question asked
    # ("... sin A = 2 cos A. What is cos A?" vs "... What is tan A?"); the templated problems that
    # share 13-grams but not their numbers (85 more) are not overlaps.
    siblings = [hit["math500"] for hit in hits if "math500" in hit]
    assert len(siblings) == 6 and {sibling["match"] for sibling in siblings} == {"ngram"}
    plain = ContaminationIndex(13, same_numbers=False)
    plain.add("math500", load_benchmark("math500", "test", data_dir))
    assert sum(bool(plain.lookup(seed["question"])) for seed in seeds) == 91

    # The run that trains on them, keeping the `math` overlaps: contaminated for math, clean for math500.
    chosen = [seed for seed, hit in zip(seeds, hits) if "math500" in hit] + seeds[:100]
    rows = [make_row(seed["id"], "cot", f"So \\boxed{{{seed['answer']}}}.", answer=seed["answer"],
                     question=seed["question"]) for seed in chosen]
    stats, kept, dropped = run(tmp_path, cot=rows, index=index, config=FilterConfig(keep_overlapping_with=("math",)))
    assert len(kept["cot"]) == 100 and len(dropped) == 6
    assert stats["contaminated_for"] == ["math"]
    assert evaluation_contamination(tmp_path, "math") is True
    assert evaluation_contamination(tmp_path, "math500") is False


def test_filter_drops_contaminated_rows_through_the_seed_and_reports_them(tmp_path):
    test_question = ("A bakery sells 120 muffins every morning and 80 muffins every afternoon from Monday to "
                     "Friday. How many muffins does it sell in a week?")
    index = ContaminationIndex(n=13)
    index.add("bench", [{"id": "bench/test/0", "question": test_question}])
    index.add("other", [{"id": "other/test/0", "question": "What is 1 + 1?"}])
    rows = [make_row("s", "cot", "\\boxed{1000}", answer="1000", question=test_question),
            make_row("s/rephrase/0", "cot", "\\boxed{1000}", answer="1000", method="rephrase", seed_id="s",
                     question="Each weekday, a shop sells 120 muffins in the morning and 80 later. Weekly total?"),
            make_row("clean", "cot", "\\boxed{5}")]
    stats, kept, dropped = run(tmp_path, cot=rows, index=index, unavailable={"asdiv": "no local file"})
    assert kept["cot"] == ["clean/cot/0"]
    assert dropped["s/cot/0"]["filter"] == "contaminated" and "exact" in dropped["s/cot/0"]["detail"]
    assert "seed exact" in dropped["s/rephrase/0/cot/0"]["detail"]
    report = json.loads((tmp_path / "filter" / "contamination.json").read_text())
    assert report["benchmarks"]["bench"]["rows"] == 2 and report["benchmarks"]["bench"]["kept_rows"] == 0
    assert report["unavailable"] == {"asdiv": "no local file"} and report["contaminated_for"] == []
    assert evaluation_contamination(tmp_path, "bench") is False
    assert evaluation_contamination(tmp_path, "asdiv") is None

    stats, kept, _ = run(tmp_path, cot=rows, index=index, config=FilterConfig(keep_overlapping_with=("bench",)))
    assert kept["cot"] == ["s/cot/0", "s/rephrase/0/cot/0", "clean/cot/0"]
    assert stats["contaminated_for"] == ["bench"]
    assert evaluation_contamination(tmp_path, "bench") is True
    assert evaluation_contamination(tmp_path, "bench:test") is True
    assert evaluation_contamination(tmp_path, "other") is False
    assert evaluation_contamination(tmp_path / "nowhere", "bench") is None


def test_evaluation_marks_contaminated_metrics(tmp_path):
    from mumath.evaluate import EvalConfig, evaluate_suites
    from mumath.executor import SandboxPool
    from tests.test_tir import ScriptedBackend

    records = [{"id": "q0", "question": "Q0", "answer": "0", "meta": {}}]
    backend = ScriptedBackend({"Q0": [("\\boxed{0}", "eos")]})
    with SandboxPool(workers=1, timeout=2) as pool:
        metrics = evaluate_suites(backend, pool, {"bench": (records, tmp_path / "bench")}, EvalConfig(mode="cot"),
                                  progress=False, extra_metrics={"bench": {"contaminated": True}})
    assert metrics[0]["contaminated"] is True
    assert json.loads((tmp_path / "bench" / "metrics.json").read_text())["contaminated"] is True


# ------------------------------------------------------------------------------ the step, end to end

def test_funnel_outputs_and_reference_rows(tmp_path):
    cot = [make_row("q", "cot", "Add them: \\boxed{5}"), make_row("q", "cot", "The answer is 5.", sample=1),
           make_row("q", "cot", "Add: \\boxed{5}", teacher="reference", sample=2, id="q/cot/reference"),
           make_row("a", "cot", "\\boxed{9}", answer=None, method="alter")]
    tir = [make_row("q", "tir", GOOD_TIR), make_row("q", "tir", FAILED_LAST, sample=1, execution_errors=1)]
    stats, kept, dropped = run(tmp_path, cot=cot, tir=tir)
    assert kept == {"cot": ["q/cot/0", "q/cot/reference"], "tir": ["q/tir/0"]}
    funnel = json.loads((tmp_path / "filter" / "funnel.json").read_text())
    assert funnel["stages"]["cot"] == {"input": 4, "contaminated": 4, "duplicate_question": 4, "format": 3,
                                       "length": 3, "answer": 2, "duplicate_solution": 2, "cap": 2}
    assert funnel["by_method"]["cot"]["alter"]["answer"] == 0 and funnel["stages"]["tir"]["format"] == 1
    assert stats["dropped_by_filter"]["cot"]["format"] == 1 and stats["rows_kept"] == {"cot": 2, "tir": 1}
    rows = [json.loads(line) for line in (tmp_path / "filter" / "stage1.jsonl").read_text().splitlines()]
    assert rows[1]["teacher"] == "reference" and rows[1]["messages"] == cot[2]["messages"]
    assert set(cot[0]) <= set(rows[0]), "every input field is kept"
    assert (tmp_path / "filter" / "funnel.png").stat().st_size > 0
    assert set(dropped) == {"q/cot/1", "a/cot/0", "q/tir/1"}


def test_bad_input_names_file_and_line_and_keeps_previous_outputs(tmp_path):
    good = make_row("q", "cot", "\\boxed{5}")
    run(tmp_path, cot=[good])
    before = (tmp_path / "filter" / "stage1.jsonl").read_text()
    (tmp_path / "cot.jsonl").write_text(json.dumps(good) + "\n{broken\n")
    with pytest.raises(FilterError, match=r"cot.jsonl:2: not valid JSON"):
        filter_rows({"cot": tmp_path / "cot.jsonl"}, tmp_path / "filter", progress=False)
    bad = dict(good)
    del bad["messages"]
    (tmp_path / "cot.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(FilterError, match=r"cot.jsonl:1: missing field\(s\) \['messages'\]"):
        filter_rows({"cot": tmp_path / "cot.jsonl"}, tmp_path / "filter", progress=False)
    assert (tmp_path / "filter" / "stage1.jsonl").read_text() == before
    with pytest.raises(FilterError, match="nothing to filter"):
        run_filter(tmp_path / "empty-run")


def test_run_filter_on_a_run_folder(tmp_path, data_dir, embedded_dir):
    """The step as the notebook calls it: real test sets, the embedded tokenizer, seeds from augment."""
    from mumath.data import load_benchmark

    leaked = load_benchmark("gsm8k", "test", data_dir)[2]["question"]
    (tmp_path / "augment").mkdir()
    write(tmp_path / "augment" / "questions.jsonl", [
        {"id": "gsm8k/train/9/rephrase/0", "seed_id": "gsm8k/train/9", "method": "rephrase",
         "question": "A reworded question.", "answer": "5", "meta": {"seed_question": leaked}}])
    (tmp_path / "synthesize").mkdir()
    write(tmp_path / "synthesize" / "cot.jsonl", [
        make_row("gsm8k/train/9/rephrase/0", "cot", "So \\boxed{5}.", method="rephrase", seed_id="gsm8k/train/9",
                 question="A reworded question."),
        make_row("clean", "cot", "So \\boxed{5}."), make_row("long", "cot", "word " * 3000 + "\\boxed{5}")])
    extra = {"mine": {"splits": {"test": {"local": str(tmp_path / "missing.jsonl")}}, "question": "q", "answer": "a"}}
    stats = run_filter(tmp_path, data_dir=str(data_dir), extra_benchmarks=extra,
                       decontaminate_benchmarks=["gsm8k", "mine"], progress=False)
    assert stats["rows_kept"] == {"cot": 1} and stats["rows_tokenized"] == 1
    dropped = [json.loads(line) for line in (tmp_path / "filter" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["id"], d["filter"]) for d in dropped] == [("gsm8k/train/9/rephrase/0/cot/0", "contaminated"),
                                                         ("long/cot/0", "length")]
    report = json.loads((tmp_path / "filter" / "contamination.json").read_text())
    assert set(report["benchmarks"]) == {"gsm8k"} and "mine" in report["unavailable"]
    assert report["benchmarks"]["gsm8k"]["by_match"] == {"seed exact": 1}
    assert evaluation_contamination(tmp_path, "mine") is None
