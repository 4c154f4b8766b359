"""Solution synthesis (step 2): chain-of-thought (stage-1 data) and code-nested solutions (stage-2 data).

Code-nested solutions come from the same tool-integrated loop as evaluation (`tir.run_tool_loop`), with
the teacher as the backend: text, a python block, its *real* sandbox output, more text, ..., `\\boxed{}`.
The teacher is asked for *prefix CoT* (reasoning before the first code block; checked, see
`tir.has_prefix_cot`) and for *code debugging* (an execution error is fed back as the output, and the teacher
writes corrected code in the next round; `errors_fixed` counts the errors followed by a successful run).

Each solution is written in chat format (`messages`: the question in the evaluation template, the
solution as the assistant turn) for SFT, with its raw trajectory and statistics beside it.

`solution_source` chooses who writes the solutions: the teacher, the seeds' own reference rationales
(`reference.py`, rows with `teacher: "reference"` in the same format), or both side by side.
"""
import time

from .backends import Sampling
from .grading import extract_answer, extract_boxed, is_equivalent
from .prompts import build_messages, user_message
from .tir import has_prefix_cot, run_tool_loop

STAGES = {"cot": {"execute": False, "template": "synth_cot"}, "tir": {"execute": True, "template": "synth_tir"}}
SOLUTION_SOURCES = ("teacher", "reference", "both")


def errors_fixed(executions):
    """Failed executions that a later execution of the same trajectory got past."""
    fixed = 0
    for position, execution in enumerate(executions):
        failed = execution["error"] or execution["timed_out"]
        if failed and any(not (later["error"] or later["timed_out"]) for later in executions[position + 1:]):
            fixed += 1
    return fixed


def synthesize(teacher, questions, executor, stage="tir", samples=1, sampling=None, max_rounds=4, few_shot=0,
               prompt_dir=None, min_prefix_words=8):
    """`samples` solutions per question -> (rows for the chat-format JSONL, raw trajectory rows)."""
    if stage not in STAGES:
        raise ValueError(f"stage '{stage}' is not one of {sorted(STAGES)}")
    sampling = sampling or Sampling(max_new_tokens=512, temperature=0.7)
    jobs = [(question, sample) for question in questions for sample in range(samples)]
    prompts = [teacher.format_prompt(build_messages(q["question"], stage, few_shot, prompt_dir,
                                                    template=STAGES[stage]["template"])) for q, _ in jobs]
    trajectories = run_tool_loop(teacher, prompts, executor, sampling, max_rounds=max_rounds,
                                 execute=STAGES[stage]["execute"])
    rows, raw = [], []
    for (question, sample), trajectory in zip(jobs, trajectories):
        pred = extract_answer(trajectory.generation)
        reference = question.get("answer")
        row = {
            "id": f"{question['id']}/{stage}/{sample}", "question_id": question["id"], "stage": stage,
            "sample": sample, "question": question["question"], "answer": reference, "pred": pred,
            "boxed": extract_boxed(trajectory.generation) is not None,
            "correct": None if reference is None else is_equivalent(pred, reference,
                                                                    question.get("meta", {}).get("choices")),
            "messages": [{"role": "user", "content": user_message(question["question"], stage, prompt_dir)},
                         {"role": "assistant", "content": trajectory.generation.strip()}],
            "teacher": getattr(teacher, "identity", None), "source": question.get("source"),
            "seed_id": question.get("seed_id", question["id"]), "method": question.get("method", "seed"),
            "rounds": trajectory.rounds, "finish": trajectory.finish,
            "executions": len(trajectory.executions),
            "execution_errors": sum(1 for e in trajectory.executions if e["error"]),
            "timeouts": sum(1 for e in trajectory.executions if e["timed_out"]),
            "errors_fixed": errors_fixed(trajectory.executions),
            "prefix_cot": has_prefix_cot(trajectory.generation, min_prefix_words) if stage == "tir" else None,
            "prompt_tokens": trajectory.prompt_tokens, "completion_tokens": trajectory.completion_tokens,
        }
        rows.append(row)
        raw.append({"id": row["id"], **trajectory.to_dict()})
    return rows, raw


def synthesis_stats(rows):
    """Per stage: solutions, share with a final \\boxed{}, share correct (where a reference exists), tool use."""
    stats = {}
    for stage in sorted({row["stage"] for row in rows}):
        group = [row for row in rows if row["stage"] == stage]
        graded = [row for row in group if row["correct"] is not None]
        stats[stage] = {
            "solutions": len(group),
            "boxed_share": round(sum(r["boxed"] for r in group) / len(group), 3),
            "correct_share": round(sum(r["correct"] for r in graded) / len(graded), 3) if graded else None,
            "mean_rounds": round(sum(r["rounds"] for r in group) / len(group), 2),
            "executions": sum(r["executions"] for r in group),
            "execution_errors": sum(r["execution_errors"] for r in group),
            "errors_fixed": sum(r["errors_fixed"] for r in group),
            "timeouts": sum(r["timeouts"] for r in group),
            "with_code": sum(1 for r in group if r["executions"]),
            "prefix_cot_share": round(sum(bool(r["prefix_cot"]) for r in group) / len(group), 3)
            if stage == "tir" else None,
        }
    return stats


def run_synthesize(run_dir, teacher, executor, questions_file=None, include_seeds=True,
                   seed_benchmarks=("gsm8k:train",), seeds_per_benchmark=None, data_dir=None, seed=0,
                   stages=None, sampling=None, max_rounds=4, few_shot=0, prompt_dir=None,
                   solution_source="teacher", reference_blocks="step"):
    """Step 2 of a run: questions -> <run_dir>/synthesize/<stage>.jsonl (+ trajectories, stats.json).

    `stages` maps a stage (cot, tir) to samples per question. Questions are the augmented ones
    (`questions_file`, default <run_dir>/augment/questions.jsonl, if it exists) plus, with
    `include_seeds`, the seed questions themselves. `solution_source`: `teacher`, `reference` (one
    solution per question and stage from the seed's rationale; `teacher` may be None) or `both`.
    """
    if solution_source not in SOLUTION_SOURCES:
        raise ValueError(f"parameter 'solution_source' is '{solution_source}', not one of {SOLUTION_SOURCES}")
    from pathlib import Path

    from .data import load_many
    from .manifest import record_inputs
    from .records import read_jsonl, write_json, write_jsonl

    inputs = []
    questions = load_many(seed_benchmarks, "train", data_dir, seeds_per_benchmark, seed, inputs=inputs) \
        if include_seeds else []
    questions_file = Path(questions_file or Path(run_dir) / "augment" / "questions.jsonl")
    if questions_file.exists():
        questions += read_jsonl(questions_file)
        inputs.append(str(questions_file))
    if not questions:
        raise ValueError(f"nothing to synthesize: {questions_file} does not exist and include_seeds is False")
    record_inputs(run_dir, inputs)
    stages = stages or {"cot": 1, "tir": 1}
    out = Path(run_dir) / "synthesize"
    all_rows, reference_stats, seed_files = [], {}, []
    for stage, samples in stages.items():
        rows, raw = [], []
        if solution_source in ("teacher", "both"):
            teacher.step = f"synthesize-{stage}"
            rows, raw = synthesize(teacher, questions, executor, stage, samples, sampling, max_rounds, few_shot,
                                   prompt_dir)
        if solution_source in ("reference", "both"):
            more, more_raw, reference_stats[stage] = synthesize_reference(
                questions, executor, stage, reference_blocks, data_dir, prompt_dir, seed_files)
            rows, raw = rows + more, raw + more_raw
        write_jsonl(out / f"{stage}.jsonl", rows)
        write_jsonl(out / f"{stage}_trajectories.jsonl", raw)
        all_rows += rows
    record_inputs(run_dir, sorted(set(seed_files)))  # seed splits read for augmented questions' rationales
    stats = {"questions": len(questions), "stages": synthesis_stats(all_rows), "solution_source": solution_source,
             "rows_by_source": rows_by_source(all_rows), "teacher": getattr(teacher, "identity", None),
             "usage": teacher.usage.to_dict() if teacher is not None else None}
    if reference_stats:
        stats["reference"] = reference_stats
    write_json(out / "stats.json", stats)
    return stats


def synthesize_reference(questions, executor, stage, blocks="step", data_dir=None, prompt_dir=None, inputs=None):
    """The reference source for one stage -> (rows, raw trajectories, counts with the time it took)."""
    from .reference import find_seeds, reference_solutions

    started = time.perf_counter()
    seeds = find_seeds(questions, [q for q in questions if q.get("method", "seed") == "seed"], data_dir, inputs)
    rows, raw, counts = reference_solutions(questions, seeds, executor, stage, blocks, prompt_dir)
    counts["seconds"] = round(time.perf_counter() - started, 1)
    return rows, raw, counts


def rows_by_source(rows):
    """{stage: {teacher identity: rows}}."""
    counts = {}
    for row in rows:
        by_teacher = counts.setdefault(row["stage"], {})
        by_teacher[row["teacher"]] = by_teacher.get(row["teacher"], 0) + 1
    return counts
