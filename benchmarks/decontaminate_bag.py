"""How the word-order-independent ("bag") decontamination check behaves at several Jaccard thresholds.

    python benchmarks/decontaminate_bag.py [--sample 500]

Writes benchmarks/results/decontaminate-bag.json. Two measures over the shipped data:
- caught: test questions of GSM8K and SVAMP with their sentences reordered (last first) and their first
  name changed, looked up against their own test set: the share the bag check finds (and the 13-gram one);
- flagged unrelated: GSM8K train questions against every shipped test set, and MATH train_offline (MATH test
  minus MATH500) against MATH500: questions the bag check would flag (which may include real near-copies).
For each query the best Jaccard among the test questions with the same numbers is computed exactly; the
check itself skips questions with LaTeX math or under BAG_MIN_WORDS content words (both counts are shown).
"""
import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.data import load_benchmark  # noqa: E402
from mumath.decontaminate import (ContaminationIndex, bag_applies, bag_of, jaccard, normalize_words,  # noqa: E402
                                  numbers_of, test_benchmarks)

THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.9]
NAME = re.compile(r"(?<=[a-z,] )([A-Z][a-z]{2,})\b")


def reorder_and_rename(question):
    sentences = re.split(r"(?<=[.?!])\s+", question.strip())
    moved = " ".join(sentences[-1:] + sentences[:-1]) if len(sentences) > 1 else question
    name = NAME.search(question) or re.match(r"([A-Z][a-z]{2,})", question)
    return moved.replace(name.group(1), "Zorblax") if name else moved


def best_jaccard(question, by_numbers, scoped):
    words = normalize_words(question)
    bag = bag_of(words)
    if scoped and not bag_applies(question, bag):
        return 0.0
    return max((jaccard(bag, other) for other in by_numbers.get(numbers_of(words), [])), default=0.0)


def by_numbers(records, scoped):
    table = {}
    for record in records:
        words = normalize_words(record["question"])
        if not scoped or bag_applies(record["question"], bag_of(words)):
            table.setdefault(numbers_of(words), []).append(bag_of(words))
    return table


def shares(values, total):
    return {str(t): round(sum(v >= t for v in values) / total, 4) for t in THRESHOLDS}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decontaminate-bag.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    result = {"thresholds": THRESHOLDS, "caught": {}, "flagged_unrelated": {}}
    for name in ("gsm8k", "svamp"):
        tests = load_benchmark(name, "test")
        table = by_numbers(tests, True)
        chosen = random.Random(0).sample(tests, min(args.sample, len(tests)))
        changed = [reorder_and_rename(record["question"]) for record in chosen]
        ngram = ContaminationIndex(13, bag_jaccard=None)
        ngram.add(name, tests)
        values = [best_jaccard(question, table, True) for question in changed]
        both = ContaminationIndex(13, bag_jaccard=0.7)  # what the filter step uses: 13-gram, then bag at 0.7
        both.add(name, tests)
        found = [both.lookup(question).get(name, {}).get("match") for question in changed]
        result["caught"][name] = {"questions": len(chosen), "bag_share_at": shares(values, len(chosen)),
                                  "ngram13_share": round(sum(bool(ngram.lookup(q)) for q in changed) / len(chosen), 4),
                                  "index_share_default": round(sum(bool(match) for match in found) / len(chosen), 4),
                                  "example": changed[0]}
    all_tests = []
    for name in test_benchmarks():
        try:
            all_tests += load_benchmark(name, "test")
        except Exception:  # noqa: BLE001 - a benchmark with no shipped copy is left out of this measure
            continue
    for label, queries, tests in (("gsm8k:train vs every shipped test set", load_benchmark("gsm8k", "train"),
                                   all_tests),
                                  ("math:train_offline vs math500", load_benchmark("math", "train_offline"),
                                   load_benchmark("math500", "test"))):
        result["flagged_unrelated"][label] = {"questions": len(queries), "test_questions": len(tests)}
        for scoped in (False, True):  # every question, or word problems only (what the check does)
            table = by_numbers(tests, scoped)
            values = [best_jaccard(record["question"], table, scoped) for record in queries]
            key = "flagged_at_word_problems_only" if scoped else "flagged_at_latex_included"
            result["flagged_unrelated"][label][key] = {str(t): sum(v >= t for v in values) for t in THRESHOLDS}
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
