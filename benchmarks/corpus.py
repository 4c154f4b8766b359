"""Corpus import throughput: rows/s of `corpus.import_corpus` without and with re-execution, and of the filter.

    python benchmarks/corpus.py [--rows 2000] [--reexecute-rows 200] [--workers 2]

The corpus is built here in the MuMath-Code data format (JSONL, `messages`, `gt`) from the shipped GSM8K
train split: each row's solution is its rationale (annotations stripped) followed by a python block that
prints the answer, its output, and a boxed answer. The arms run one after the other in this one process.
Writes benchmarks/results/corpus-import.json.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.corpus import builtin_registry, import_corpus  # noqa: E402
from mumath.data import load_benchmark  # noqa: E402
from mumath.executor import SandboxPool  # noqa: E402
from mumath.filter import FilterConfig, filter_rows  # noqa: E402
from mumath.records import write_jsonl  # noqa: E402
from mumath.reference import split_rationale, strip_annotations  # noqa: E402


def corpus_rows(n):
    rows = []
    for record in load_benchmark("gsm8k", "train", limit=n, seed=0):
        lines, answer = split_rationale(record["meta"]["answer"])
        text = "\n".join(strip_annotations(line) for line in lines)
        solution = (f"{text}\nI check the final number with python.\n```python\nprint({answer})\n```\n"
                    f"```output\n{answer}\n```\nThe answer is \\boxed{{{answer}}}.")
        rows.append({"messages": [{"role": "user", "content": record["question"]},
                                  {"role": "assistant", "content": solution}], "gt": record["answer"]})
    return rows


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--reexecute-rows", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    write_jsonl(folder / "corpus.jsonl", corpus_rows(args.rows))
    extra = {"bench": dict(builtin_registry()["mumath-code"], local=str(folder / "corpus.jsonl"))}
    results = {"rows": args.rows, "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    (by_stage, counts), seconds = timed(lambda: import_corpus("bench", extra=extra, progress=False))
    results["import"] = {"rows": counts["imported"], "seconds": round(seconds, 2),
                         "rows_per_second": round(counts["imported"] / seconds, 1)}
    with SandboxPool(workers=args.workers, timeout=10) as pool:
        (_, checked), seconds = timed(lambda: import_corpus("bench", extra=extra, limit=args.reexecute_rows,
                                                            executor=pool, reexecute_mode="check", progress=False))
    results["import_reexecute_check"] = {"rows": checked["read"], "seconds": round(seconds, 2),
                                         "rows_per_second": round(checked["read"] / seconds, 1),
                                         "blocks": checked["reexecuted_blocks"], "dropped": checked["dropped"],
                                         "workers": args.workers}
    write_jsonl(folder / "tir.jsonl", by_stage["tir"])
    stats, seconds = timed(lambda: filter_rows({"tir": folder / "tir.jsonl"}, folder / "filter",
                                               FilterConfig(max_tokens=None), progress=False))
    results["filter_no_decontamination"] = {"rows": len(by_stage["tir"]), "seconds": round(seconds, 2),
                                            "rows_per_second": round(len(by_stage["tir"]) / seconds, 1),
                                            "kept": stats["rows_kept"]}
    out = Path(__file__).parent / "results" / "corpus-import.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
