"""Filter throughput and peak memory on synthetic rows at scale (target: 200k rows, < 2 min, < 4 GB, 2 cores).

    python benchmarks/filter.py [--rows 200000] [--data-dir ../shared/data] [--tokenizer embedded]

The rows are written first (not timed), then a child process runs the whole filter step on them:
the decontamination index over every registered benchmark's test questions, the training tokenizer's
length counts, pseudo-answer votes, MinHash LSH dedupe, and the outputs. Its wall time, CPU time
(user + system: what the same work takes on otherwise idle cores; the step is single-threaded apart
from the tokenizer) and peak resident memory (ru_maxrss) go to benchmarks/results/filter.json, with the
load average: on a shared machine the wall time includes waiting for the CPU.

The rows imitate a real synthesis output: questions from GSM8K train and MATH (offline train split)
with rephrasings, alterations (no reference: pseudo answers) and FOBAR variants; 4 CoT + 4 code-nested
solutions per question, 300-2500 characters (a few long enough for the length limit), about 70 %
correct, duplicated and near-duplicated solutions, failed last executions, missing boxes, and
questions copied or reworded from GSM8K test (contaminated).
"""
import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILLER = ("We read the problem carefully and write down what is given. Let us compute each quantity step by "
          "step, keeping track of the units. Then we combine the partial results to answer what is asked.").split()


def seed_questions(data_dir, rng):
    from mumath.data import load_benchmark

    try:
        seeds = load_benchmark("gsm8k", "train", data_dir) + load_benchmark("math", "train_offline", data_dir)
        tests = load_benchmark("gsm8k", "test", data_dir)
    except Exception as error:  # no local data: made-up questions (decontamination then finds nothing)
        print(f"no benchmark data ({error}); using generated questions")
        seeds = [{"id": f"gen/{i}", "question": f"A farmer has {i} cows and buys {i % 7 + 2} more each week for "
                  f"{i % 5 + 1} weeks. How many cows does he have?", "answer": str(i + (i % 7 + 2) * (i % 5 + 1))}
                 for i in range(12000)]
        tests = []
    rng.shuffle(seeds)
    return seeds, tests


def variants(seed, rng):
    """The seed and one augmented question (rephrase, alter or FOBAR), as synthesize sees them."""
    yield {"id": seed["id"], "question": seed["question"], "answer": seed["answer"], "method": "seed"}
    method = rng.choice(["rephrase", "alter", "fobar"])
    words = seed["question"].split()
    if method == "rephrase":
        question = "Consider this problem. " + " ".join(words[:-1]) + " Please answer: " + words[-1]
        answer = seed["answer"]
    elif method == "alter":
        question = " ".join(str(rng.randint(2, 99)) if w.isdigit() else w for w in words)
        answer = None
    else:
        question = seed["question"] + " If we know the answer to the above question is 18, what is X?"
        answer = str(rng.randint(1, 50))
    yield {"id": f"{seed['id']}/{method}/0", "question": question, "answer": answer, "method": method}


def solution(question, answer, stage, rng):
    """(assistant text, execution fields) of one synthetic solution."""
    value = answer if answer is not None and rng.random() < 0.7 else str(rng.randint(1, 40))
    if answer is None:  # alterations: samples mostly agree, so votes can find a pseudo answer
        value = "42" if rng.random() < 0.6 else str(rng.randint(1, 40))
    length = rng.choice([40, 80, 120, 200, 300]) if rng.random() > 0.01 else 1400  # words
    words = [rng.choice(FILLER) for _ in range(length)] + question.split()[:20]
    steps = " ".join(f"{w} {rng.randint(1, 999)} ," if i % 9 == 0 else w for i, w in enumerate(words))
    box = f"\\boxed{{{value}}}" if rng.random() > 0.05 else value
    fields = {"correct": None if answer is None else value == answer, "rounds": 1, "finish": "eos",
              "executions": 0, "execution_errors": 0, "errors_fixed": 0,
              "timeouts": 0, "prefix_cot": None}
    if stage == "cot":
        return f"{steps}\nThe answer is {box}.", fields
    failed = rng.random() < 0.08
    code = f"a = {rng.randint(1, 99)}\nb = {rng.randint(1, 99)}\nprint(a * b + {value!r}.count('1'))"
    output = "NameError: name 'c' is not defined" if failed else value
    text = (f"{steps}\n```python\n{code}\n```\n```output\n{output}\n```\nTherefore the answer is {box}.")
    fields.update(rounds=2, executions=1, execution_errors=int(failed), prefix_cot=True)
    return text, fields


def write_rows(folder, rows_wanted, data_dir, seed=0):
    from mumath.grading import extract_answer

    rng = random.Random(seed)
    seeds, tests = seed_questions(data_dir, rng)
    handles = {stage: open(Path(folder) / f"{stage}.jsonl", "w") for stage in ("cot", "tir")}
    written, index = 0, 0
    while written < rows_wanted:
        seed_record = seeds[index % len(seeds)]
        if tests and rng.random() < 0.02:  # contaminated: a GSM8K test question, copied or reworded
            test = rng.choice(tests)
            text = test["question"] if rng.random() < 0.5 else "Here is a problem: " + test["question"].replace(",", "")
            seed_record = {"id": f"leak/{index}", "question": text, "answer": test["answer"]}
        seed_id = f"{seed_record['id']}#{index}"
        for question in variants(dict(seed_record, id=seed_id), rng):
            for stage in ("cot", "tir"):
                previous = None
                for sample in range(4):
                    if previous and rng.random() < 0.1:  # an exact duplicate up to spacing
                        text, fields = previous[0].replace(" ", "  "), previous[1]
                    else:
                        text, fields = solution(question["question"], question["answer"], stage, rng)
                    previous = (text, fields)
                    row = {"id": f"{question['id']}/{stage}/{sample}", "question_id": question["id"],
                           "stage": stage, "sample": sample, "question": question["question"],
                           "answer": question["answer"], "pred": None, "messages": [
                               {"role": "user", "content": f"Solve the problem.\n{question['question']}"},
                               {"role": "assistant", "content": text}],
                           "teacher": "synthetic", "source": "benchmark", "seed_id": seed_id,
                           "method": question["method"], **fields}
                    row["pred"] = extract_answer(text)
                    handles[stage].write(json.dumps(row) + "\n")
                    written += 1
        index += 1
    for handle in handles.values():
        handle.close()
    return written


def measure(folder, data_dir, tokenizer):
    """Child process: the timed filter run; prints its statistics as JSON."""
    from mumath.filter import FilterConfig, run_filter

    started = time.perf_counter()
    # As the offline recipe runs it: the MATH seeds are MATH test problems, kept (the run is then marked
    # contaminated for `math` and evaluated on math500).
    config = FilterConfig(keep_overlapping_with=("math",))
    stats = run_filter(folder, data_dir=data_dir, tokenizer=tokenizer, config=config, progress=False)
    seconds = time.perf_counter() - started
    report = json.loads((Path(folder) / "filter" / "contamination.json").read_text())
    overlaps = {name: entry["rows"] for name, entry in report["benchmarks"].items() if entry["rows"]}
    print(json.dumps({"seconds": round(seconds, 1), "stats": stats, "overlapping_rows": overlaps}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--data-dir", default=os.environ.get("MUMATH_DATA_DIR") or str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--tokenizer", default="embedded")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "filter.json"))
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.data_dir, args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synthesize"
        synth.mkdir()
        started = time.perf_counter()
        rows = write_rows(synth, args.rows, args.data_dir)
        print(f"wrote {rows} rows in {time.perf_counter() - started:.0f} s "
              f"({sum(f.stat().st_size for f in synth.iterdir()) / 2**20:.0f} MiB)")
        child = subprocess.run([sys.executable, __file__, "--measure", tmp, "--data-dir", args.data_dir,
                                "--tokenizer", args.tokenizer], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if child.returncode:
            sys.exit(f"filter failed:\n{child.stderr[-3000:]}")
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_gib, cpu_s = usage.ru_maxrss / 2**20, usage.ru_utime + usage.ru_stime
    stats = measured["stats"]
    result = {"rows": rows, "cpus": os.cpu_count(), "machine": platform.machine(),
              "wall_s": measured["seconds"], "cpu_s": round(cpu_s, 1), "peak_rss_gib": round(peak_gib, 2),
              "load_average_at_end": os.getloadavg(),
              "target": "200k rows under 120 s and 4 GiB on 2 cores",
              "rows_kept": stats["rows_kept"], "dropped_by_filter": stats["dropped_by_filter"],
              "pseudo_answers": stats["pseudo_answers"], "rows_tokenized": stats["rows_tokenized"],
              "overlapping_rows": measured["overlapping_rows"], "filter_only_s": stats["seconds"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
