"""Reference solutions: GSM8K rationales and MATH solutions turned into CoT and code-nested rows."""
import re

import pytest

from mumath.executor import SandboxPool
from mumath.prompts import user_message
from mumath.records import read_jsonl, write_jsonl
from mumath.reference import (ConversionError, annotate_text_equations, code_solution, fobar_solution, gsm8k_cot,
                              math_cot, parse_rationale, plan_text, reference_solutions, to_python)
from mumath.synthesize import run_synthesize, synthesize
from mumath.tir import CODE_BLOCK, format_output
from mumath.backends import Completion
from mumath.teacher import Usage

NATALIA = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
           "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
NATALIA_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?")
OUTPUT_BLOCK = re.compile(r"```python\n.*?```\n```output\n(.*?)\n```\n", re.DOTALL)


class GuessingTeacher:
    """A stand-in teacher that answers 0 to everything (the teacher's own path has its tests)."""
    identity, step = "scripted:guess", None

    def __init__(self):
        self.usage = Usage()

    def format_prompt(self, messages):
        return messages[-1]["content"]

    def complete(self, prompts, sampling, stop=(), on_result=None):
        return [Completion("I think it is \\boxed{0}", "eos", 10, 5) for _ in prompts]


def seed(question, rationale, key="0"):
    answer = rationale.rsplit("####", 1)[1].strip().replace(",", "")
    return {"id": f"gsm8k/train/{key}", "question": question, "answer": answer, "source": "gsm8k/train",
            "meta": {"answer": rationale}}


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout=5) as sandbox:
        yield sandbox


# ---------------------------------------------------------------- parsing tricky rationales (no sandbox)

def test_cot_strips_annotations_and_boxes_the_answer():
    cot = gsm8k_cot("So he makes 4500*5=$<<4500*5=22500>>22,500 a year.\n#### 22,500")
    assert cot == "So he makes 4500*5=$22,500 a year.\nThe answer is \\boxed{22500}."
    assert math_cot(" The sum is $\\boxed{\\frac{1}{2}}$. ") == "The sum is $\\boxed{\\frac{1}{2}}$."
    with pytest.raises(ConversionError, match="no_final_answer"):
        math_cot("no box here")
    with pytest.raises(ConversionError, match="no_final_answer"):
        gsm8k_cot("48/2 = <<48/2=24>>24")


@pytest.mark.parametrize("line, plan", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.", "Natalia sold 48/2 clips in May."),
    # thousands separators in the written result: all of '22,500' goes, not just '22'
    ("He makes 4500*5=$<<4500*5=22500>>22,500 a year", "He makes 4500*5 a year"),
    # dollars on both sides
    ("The total cost is $8000 + $6000 = $<<8000+6000=14000>>14,000.", "The total cost is $8000 + $6000."),
    # a percentage result
    ("That is 30/120*100 = <<30/120*100=25>>25% of the class.", "That is 30/120*100 of the class."),
    # no '=' written before the annotation: the expression takes the result's place
    ("It weighed <<6+6=12>>12 pounds.", "It weighed 6 + 6 pounds."),
    # units repeated after the result are said once
    ("There were 3 hats + 16 hats = <<3+16=19>>19 hats in the truck.", "There were 3 hats + 16 hats in the truck."),
    # two computations on one line
    ("He has 3*4=<<3*4=12>>12 apples and 12+3=<<12+3=15>>15 pears.", "He has 3*4 apples and 12+3 pears."),
])
def test_plan_text(line, plan):
    assert plan_text(line) == plan


def test_names_from_the_text_and_repeated_quantities():
    steps = parse_rationale(
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "She earned 0.2 x 50 = $<<0.2*50=10>>10.\n"
        "She sold 2*3=<<2*3=6>>6 apples, then 3*3=<<3*3=9>>9 apples.\n"
        "In total 6+9=<<6+9=15>>15 apples.\n#### 15").steps
    assert [s.name for s in steps] == ["per_minute", None, "apples", "apples_2", "apples_3"]
    assert [s.expression for s in steps][:2] == ["12 / 60", "0.2 * 50"]
    # a name that would shadow a builtin or keyword is suffixed
    assert parse_rationale("It is 2+3=<<2+3=5>>5 sum.\n#### 5").steps[0].name == "sum_value"


def test_an_annotation_holding_only_its_result_takes_the_written_arithmetic():
    steps = parse_rationale("Then subtract 4: 12 - 4 = <<8=8>>8\nHis discount is .10*280= $<<28=28.00>>28.00\n"
                            "She has the bikes she had + 12 - 18 = <<45=45>>45 bikes\n#### 45").steps
    # ... but not the tail of a longer expression, which keeps the bare result
    assert [s.expression for s in steps] == ["12 - 4", "0.1 * 280", "45"]


@pytest.mark.parametrize("annotation, python", [
    ("48/2", "48 / 2"), ("20000*.8", "20000 * 0.8"), ("3*-2", "3 * -2"), ("2^3", "2 ** 3"),
    ("12x2", "12 * 2"), ("50*20%", "50 * 20 / 100"), ("1,200+300", "1200 + 300"), ("(3+4)*2", "(3 + 4) * 2"),
])
def test_annotation_to_python(annotation, python):
    assert to_python(annotation) == python


def test_annotation_that_is_not_arithmetic_is_refused():
    with pytest.raises(ConversionError, match="unparsable_annotation"):
        to_python("__import__('os')")
    with pytest.raises(ConversionError, match="unparsable_annotation"):
        to_python("3 apples")


def test_rationales_without_code_are_refused_with_a_reason():
    with pytest.raises(ConversionError, match="no_annotations"):
        code_solution("She has 5 left.\n#### 5", "q")
    with pytest.raises(ConversionError, match="answer_not_computed"):
        code_solution("75-55 = $<<75-55=20>>20 left.\nShe bought 4 tops, so each cost five dollars.\n#### 5", "q")


@pytest.mark.parametrize("line, annotated", [
    ("So 20/4 = $5 each.", "So 20/4 = $<<20 / 4=5>>5 each."),
    ("Caleb spent $40 − $4 = $36 more.", "Caleb spent $40 − $4 = $<<40 - 4=36>>36 more."),
    ("He makes 22,500*20 = 450,000 a year.", "He makes 22,500*20 = <<22500 * 20=450000>>450,000 a year."),
    ("Then 6*4 + 2 = 24 + 2 = 26.", "Then 6*4 + 2 = 24 + 2 = <<24 + 2=26>>26."),  # only the plain link
    # left alone: already annotated, mixed numbers, algebra, clock times, fractions, division by a fraction
    ("48/2 = <<48/2=24>>24 clips", "48/2 = <<48/2=24>>24 clips"),
    ("8 x 1 1/2 = 12 rolls", "8 x 1 1/2 = 12 rolls"),
    ("He works M + 4 + 2 = 8 hours.", "He works M + 4 + 2 = 8 hours."),
    ("22 - 16 = 6 + x - 16", "22 - 16 = 6 + x - 16"),
    ("It sets at 6:00+48=6:48 PM", "It sets at 6:00+48=6:48 PM"),
    ("17/3 = 5 and 2/3 loads", "17/3 = 5 and 2/3 loads"),
    ("1 - 3/7 = 4/7 of it", "1 - 3/7 = 4/7 of it"),
    ("he used 25 / 1/3 = 75 decorations", "he used 25 / 1/3 = 75 decorations"),
])
def test_unannotated_arithmetic_in_the_text_is_annotated(line, annotated):
    assert annotate_text_equations(line)[0] == annotated


# ---------------------------------------------------------------- code-nested solutions, executed

def test_per_step_solution_has_real_outputs_in_the_tool_loop_format(pool):
    rows, raw, counts = reference_solutions([seed(NATALIA_Q, NATALIA)], {}, pool, "tir", blocks="step")
    solution = rows[0]["messages"][1]["content"]
    assert solution == ("Natalia sold 48/2 clips in May.\n"
                        "```python\nclips_in_may = 48 / 2\nprint(clips_in_may)\n```\n" + format_output("24.0") +
                        "Natalia sold 48+24 clips altogether in April and May.\n"
                        "```python\nclips = 48 + 24\nprint(clips)\n```\n" + format_output("72") +
                        "The answer is \\boxed{72}.")
    assert counts == {"questions": 1, "converted": 1, "dropped": {}}
    assert [e["output"] for e in raw[0]["executions"]] == ["24.0", "72"]
    assert rows[0]["executions"] == 2 and rows[0]["rounds"] == 3 and rows[0]["correct"] is True


def test_per_solution_block_uses_names_and_prints_once(pool):
    rationale = ("Lisa spends $40 on t-shirts / 2 = $<<40/2=20>>20 on jeans.\n"
                 "Carly spends $20 per pair of jeans * 3 = $<<20*3=60>>60 on jeans.\n"
                 "Together 40 + 20 + 60 = $<<40+20+60=120>>120.\n#### 120")
    question = "Lisa spends $40 on t-shirts and half of it on jeans; Carly spends 3 times as much on jeans."
    rows, raw, counts = reference_solutions([seed(question, rationale)], {}, pool, "tir", blocks="solution")
    code = CODE_BLOCK.findall(rows[0]["messages"][1]["content"])
    # 20 and 60 are earlier results (and not numbers of the question): they become names; 40 stays
    assert code == ["jeans = 40 / 2\njeans_2 = jeans * 3\nstep_3 = 40 + jeans + jeans_2\nprint(step_3)\n"]
    assert OUTPUT_BLOCK.findall(rows[0]["messages"][1]["content"]) == ["120.0"]
    assert counts["converted"] == 1 and len(raw[0]["executions"]) == 1


def test_question_numbers_stay_literals_in_a_per_solution_block(pool):
    # 2 is a result of step 1, but also a number of the question: it stays a literal.
    rationale = "Half of 4 is 4/2=<<4/2=2>>2 cups.\nThen 2*2=<<2*2=4>>4 spoons.\n#### 4"
    rows, _, _ = reference_solutions([seed("She has 4 cups and 2 spoons each.", rationale)], {}, pool, "tir",
                                     blocks="solution")
    assert "spoons = 2 * 2" in rows[0]["messages"][1]["content"]


def test_annotation_mismatch_drops_the_solution_and_is_counted(pool):
    wrong = "He buys 3*5 = <<3*5=16>>16 pens.\nThen 16+4 = <<16+4=20>>20 pens.\n#### 20"
    questions = [seed(NATALIA_Q, NATALIA, "0"), seed("Pens?", wrong, "1")]
    for blocks in ("step", "solution"):
        rows, raw, counts = reference_solutions(questions, {}, pool, "tir", blocks=blocks)
        assert [r["question_id"] for r in rows] == ["gsm8k/train/0"]
        assert counts["dropped"] == {"disagreement": 1} and counts["converted"] == 1
    # the CoT of the same rationale is kept: it is the rationale's own text
    rows, _, counts = reference_solutions(questions, {}, pool, "cot")
    assert counts["converted"] == 2
    # wrong arithmetic written without an annotation is caught the same way, and counted apart
    text_error = "The team scored 10 x 1,248 = 11,480 points.\n#### 11480"
    _, _, counts = reference_solutions([seed("Points?", text_error)], {}, pool, "tir")
    assert counts["dropped"] == {"disagreement_text": 1}


def test_fobar_solves_the_seeds_computation_for_x(pool):
    from mumath.augment import FOBAR_SUFFIX

    natalia = seed(NATALIA_Q, NATALIA)
    fobar = {"id": "gsm8k/train/0/fobar/0", "seed_id": natalia["id"], "method": "fobar", "answer": "48",
             "source": "augment/fobar", "question": NATALIA_Q.replace("48", "X") + " " + FOBAR_SUFFIX.format(answer=72),
             "meta": {"masked_value": "48", "seed_question": NATALIA_Q, "seed_answer": "72"}}
    rows, raw, counts = reference_solutions([fobar], {natalia["id"]: natalia}, pool, "tir")
    solution = rows[0]["messages"][1]["content"]
    assert "clips_in_may = X / 2" in solution and "clips = X + clips_in_may" in solution
    assert OUTPUT_BLOCK.findall(solution) == ["[48]"] and solution.endswith("\\boxed{48}.")
    assert rows[0]["correct"] is True and rows[0]["method"] == "fobar"
    # a masked number no step uses cannot be solved for: refused, counted
    unused = dict(fobar, id="x", meta=dict(fobar["meta"], masked_value="7"), answer="7")
    _, _, counts = reference_solutions([unused], {natalia["id"]: natalia}, pool, "tir")
    assert counts["dropped"] == {"masked_number_unused": 1}
    # a masked percentage is a fraction in the rationale: '80%' -> '.8' -> 'X / 100'
    roses_q = "Jan buys 5 dozen roses. Each rose cost $6. He only needs to pay 80%. How much did he pay?"
    roses = seed(roses_q, "He got 5*12=<<5*12=60>>60 roses\nSo the cost was 6*60=$<<6*60=360>>360\n"
                          "So he has to pay 360*.8=$<<360*.8=288>>288\n#### 288", "1")
    masked = dict(fobar, id="p", seed_id=roses["id"], answer="80", meta={"masked_value": "80"})
    rows, _, _ = reference_solutions([masked], {roses["id"]: roses}, pool, "tir")
    assert "X / 100" in rows[0]["messages"][1]["content"] and OUTPUT_BLOCK.findall(
        rows[0]["messages"][1]["content"]) == ["[80]"]
    # a masked number that the question has twice: which one a step uses cannot be told
    with pytest.raises(ConversionError, match="fobar_ambiguous"):
        fobar_solution("The second is 3*2=<<3*2=6>>6 cm.\nTogether 3+6=<<3+6=9>>9 cm.\n#### 9",
                       "Jazel has 3 sticks. One is 3 cm long, the second twice as long. How long are they?", "3", "9")
    # the solver must return exactly the masked number (here the seed's answer is changed)
    with pytest.raises(ConversionError, match="answer_not_computed"):
        fobar_solution(NATALIA, NATALIA_Q, "48", "73")


def test_augmented_questions(pool):
    natalia = seed(NATALIA_Q, NATALIA)
    rephrase = {"id": "r", "seed_id": natalia["id"], "method": "rephrase", "answer": "72",
                "question": "In April Natalia sold clips to 48 friends, in May half as many. How many in all?"}
    alter = {"id": "a", "seed_id": natalia["id"], "method": "alter", "answer": None, "question": "Other?"}
    rows, _, counts = reference_solutions([rephrase, alter], {natalia["id"]: natalia}, pool, "cot")
    assert [r["question"] for r in rows] == [rephrase["question"]]
    assert rows[0]["messages"][0]["content"] == user_message(rephrase["question"], "cot")
    assert counts["dropped"] == {"no_reference_alter": 1}


# ---------------------------------------------------------------- real data: re-execute what was produced

def test_reexecuting_produced_solutions_reproduces_every_recorded_output(pool, data_dir):
    from mumath.data import load_benchmark

    questions = load_benchmark("gsm8k", "train", data_dir, limit=40, seed=7)
    for blocks in ("step", "solution"):
        rows, _, counts = reference_solutions(questions, {}, pool, "tir", blocks=blocks)
        assert counts["converted"] >= 30 and all(r["correct"] for r in rows)
        with SandboxPool(workers=2, timeout=5) as fresh:  # a pool that never saw these snippets
            for row in rows[:15]:
                solution = row["messages"][1]["content"]
                codes, outputs = CODE_BLOCK.findall(solution), OUTPUT_BLOCK.findall(solution)
                assert len(codes) == len(outputs) == row["executions"] >= 1
                results = fresh.execute_many(codes)
                assert [result.as_output(2000) for result in results] == outputs, row["id"]


def test_run_synthesize_reference_and_both(tmp_path, pool, data_dir):
    run = tmp_path / "run"
    natalia_id = "gsm8k/train/0"
    write_jsonl(run / "augment" / "questions.jsonl", [
        {"id": f"{natalia_id}/rephrase/0", "question": "Rephrased: 48 friends in April, half in May; total?",
         "answer": "72", "source": "augment/rephrase", "seed_id": natalia_id, "method": "rephrase", "meta": {}}])
    stats = run_synthesize(run, None, pool, seed_benchmarks=["gsm8k:train", "math:train_offline"],
                           seeds_per_benchmark=2, data_dir=data_dir, solution_source="reference")
    cot, tir = read_jsonl(run / "synthesize" / "cot.jsonl"), read_jsonl(run / "synthesize" / "tir.jsonl")
    assert stats["rows_by_source"]["cot"] == {"reference": 5}  # 2 GSM8K + 2 MATH seeds + 1 rephrasing
    assert stats["reference"]["tir"]["dropped"].get("no_code_for_math") == 2 and stats["teacher"] is None
    assert any(r["question_id"] == f"{natalia_id}/rephrase/0" for r in tir)  # its seed read from the split
    assert all(r["teacher"] == "reference" and r["correct"] for r in cot + tir)
    # exactly the fields of the teacher's rows
    teacher_rows, _ = synthesize(GuessingTeacher(), [cot[0]], pool, "cot")
    assert set(cot[0]) == set(teacher_rows[0]) and set(tir[0]) == set(teacher_rows[0])
    assert tir[0]["messages"][0]["content"] == user_message(tir[0]["question"], "tir")

    stats = run_synthesize(tmp_path / "both", GuessingTeacher(), pool, include_seeds=True,
                           seed_benchmarks=["gsm8k:train"], seeds_per_benchmark=2, data_dir=data_dir,
                           solution_source="both")
    assert stats["rows_by_source"] == {"cot": {"scripted:guess": 2, "reference": 2},
                                       "tir": {"scripted:guess": 2, "reference": 2}}
    ids = [r["id"] for r in read_jsonl(tmp_path / "both" / "synthesize" / "tir.jsonl")]
    assert len(ids) == len(set(ids)) == 4
    with pytest.raises(ValueError, match="solution_source"):
        run_synthesize(tmp_path / "bad", None, pool, data_dir=data_dir, solution_source="gpt")
