"""Re-grade anyone's predictions with this project's grader: ``python -m mumath grade FILE --format F``.

Separates grading errors from generation errors: the same generations (or extracted answers) are graded
by `grading.extract_answer` / `grading.is_equivalent`, the accuracy is printed with its 95 % Wilson
interval, every item's verdict is written (JSONL), and where the file carries its own verdicts the items
on which the two graders disagree are listed.

Formats (one JSON object a line):

- ``tora``: ToRA's evaluation output: ``idx``, ``question``, ``gt`` (gold), ``gt_cot``, ``code`` (list of
  full generations), ``pred`` (list of its extracted answers), ``score`` (list of its verdicts).
- ``qwen``: Qwen2.5-Math's evaluation output (derived from ToRA's): the same fields.
- ``mumath``: this project's ``trajectories.jsonl`` (``id``, ``sample``, ``question``, ``answer``,
  ``generation``, ``pred``, ``correct``).
- ``jsonl``: any file; the fields are named with ``--question-field``, ``--prediction-field``,
  ``--gold-field``, ``--verdict-field``, ``--id-field`` (defaults: question, prediction, gold, correct, id).

With ``--benchmark NAME`` the gold answer (and multiple-choice options) comes from the registry's record
of the same question (matched by normalized text, else by id); otherwise from the file. Items with
several samples are graded per sample; accuracy is over the first sample, and maj@k / pass@k are
reported (`voting`).
"""
import re
import sys
from pathlib import Path

from .evaluate import wilson_interval
from .grading import extract_answer, is_equivalent
from .records import RecordsError, iter_jsonl, write_jsonl

FORMATS = ("tora", "qwen", "mumath", "jsonl")


class GradeError(ValueError):
    pass


def _listify(value):
    return value if isinstance(value, list) else [value]


def read_items(path, fmt, fields=None, answers_only=False):
    """The file -> items {key, question, gold, samples: [{text, is_generation, verdict}], where}."""
    if fmt not in FORMATS:
        raise GradeError(f"--format '{fmt}' is not one of {FORMATS}")
    fields = dict({"question": "question", "prediction": "prediction", "gold": "gold", "verdict": "correct",
                   "id": "id"}, **(fields or {}))
    items, by_key = [], {}
    try:
        for number, row in iter_jsonl(path):
            where = f"{path}:{number}"
            if fmt in ("tora", "qwen"):
                item = _tora_item(row, where, answers_only)
            elif fmt == "mumath":
                item = _mumath_item(row, where, answers_only)
            else:
                item = _jsonl_item(row, where, fields)
            if fmt == "mumath" and item["key"] in by_key:  # one row per sample: gather them
                by_key[item["key"]]["samples"] += item["samples"]
                continue
            by_key[item["key"]] = item
            items.append(item)
    except RecordsError as error:
        raise GradeError(str(error)) from error
    if not items:
        raise GradeError(f"{path}: no rows")
    return items


def _need(row, field, where):
    if field not in row:
        raise GradeError(f"{where}: field '{field}' missing (it has {sorted(row)})")
    return row[field]


def _tora_item(row, where, answers_only):
    generations = row.get("code")
    preds = row.get("pred")
    if generations is None and preds is None:
        raise GradeError(f"{where}: neither 'code' (generations) nor 'pred' (answers) (it has {sorted(row)})")
    use_answers = answers_only or generations is None
    texts = _listify(preds if use_answers else generations)
    verdicts = _listify(row["score"]) if "score" in row else [None] * len(texts)
    return {"key": str(row.get("idx", where)), "question": str(_need(row, "question", where)),
            "gold": None if row.get("gt") is None else str(row["gt"]), "where": where,
            "samples": [{"text": None if text is None else str(text), "is_generation": not use_answers,
                         "verdict": verdict} for text, verdict in zip(texts, verdicts + [None] * len(texts))]}


def _mumath_item(row, where, answers_only):
    use_answers = answers_only or "generation" not in row
    text = row.get("pred") if use_answers else row["generation"]
    return {"key": str(_need(row, "id", where)), "question": str(_need(row, "question", where)),
            "gold": row.get("answer"), "where": where,
            "samples": [{"text": text, "is_generation": not use_answers, "verdict": row.get("correct"),
                         "sample": row.get("sample", 0)}]}


def _jsonl_item(row, where, fields):
    prediction = _need(row, fields["prediction"], where)
    texts = _listify(prediction)
    verdicts = _listify(row[fields["verdict"]]) if fields["verdict"] in row else [None] * len(texts)
    return {"key": str(row.get(fields["id"], where)), "question": str(_need(row, fields["question"], where)),
            "gold": None if row.get(fields["gold"]) is None else str(row[fields["gold"]]), "where": where,
            "samples": [{"text": None if text is None else str(text), "is_generation": True, "verdict": verdict}
                        for text, verdict in zip(texts, verdicts + [None] * len(texts))]}


def _question_key(question):
    return re.sub(r"\s+", " ", str(question)).strip().lower()


def benchmark_golds(benchmark, split="test", data_dir=None):
    """{normalized question: record} and {id suffix: record} of a registry benchmark."""
    from .data import load_benchmark, parse_spec

    name, split = parse_spec(benchmark, split)
    records = load_benchmark(name, split, data_dir)
    by_question = {_question_key(record["question"]): record for record in records}
    by_id = {record["id"].rsplit("/", 1)[-1]: record for record in records}
    return by_question, by_id


def grade_items(items, benchmark=None, split="test", data_dir=None):
    """Per-item verdicts (sample 0 first) with where each gold came from."""
    by_question, by_id = benchmark_golds(benchmark, split, data_dir) if benchmark else ({}, {})
    graded = []
    for item in items:
        record = by_question.get(_question_key(item["question"])) or by_id.get(item["key"])
        gold, choices = (record["answer"], record["meta"].get("choices")) if record else (item["gold"], None)
        if gold is None:
            raise GradeError(f"{item['where']}: no gold answer: the file has none for this item"
                             + (f" and its question is not in benchmark '{benchmark}'" if benchmark else
                                "; give --benchmark NAME"))
        samples = sorted(item["samples"], key=lambda sample: sample.get("sample", 0))
        verdicts = []
        for sample in samples:
            pred = extract_answer(sample["text"]) if sample["is_generation"] else sample["text"]
            verdicts.append({"pred": pred, "correct": is_equivalent(pred, gold, choices),
                             "file_verdict": None if sample["verdict"] is None else bool(sample["verdict"])})
        first = verdicts[0]
        graded.append({"key": item["key"], "question": item["question"], "gold": str(gold),
                       "gold_from": "benchmark" if record else "file", "file_gold": item["gold"],
                       "pred": first["pred"], "correct": first["correct"], "file_correct": first["file_verdict"],
                       "disagree": first["file_verdict"] is not None and first["file_verdict"] != first["correct"],
                       "samples": verdicts, "where": item["where"]})
    return graded


def summary(graded):
    n = len(graded)
    correct = sum(item["correct"] for item in graded)
    result = {"n": n, "correct": correct, "accuracy": correct / n, "ci95": list(wilson_interval(correct, n)),
              "gold_from_benchmark": sum(item["gold_from"] == "benchmark" for item in graded)}
    judged = [item for item in graded if item["file_correct"] is not None]
    if judged:
        theirs = sum(item["file_correct"] for item in judged)
        result.update(file_n=len(judged), file_correct=theirs, file_accuracy=theirs / len(judged),
                      file_ci95=list(wilson_interval(theirs, len(judged))),
                      disagreements=sum(item["disagree"] for item in graded),
                      we_accept_they_reject=sum(item["disagree"] and item["correct"] for item in graded),
                      we_reject_they_accept=sum(item["disagree"] and not item["correct"] for item in graded))
    k = min(len(item["samples"]) for item in graded)
    if k > 1:
        from .voting import voting_metrics

        rows = [{"id": item["key"], "sample": index, "pred": sample["pred"], "correct": sample["correct"]}
                for item in graded for index, sample in enumerate(item["samples"][:k])]
        result["voting"] = voting_metrics(rows, k)
    return result


def grade_file(path, fmt, benchmark=None, split="test", data_dir=None, out=None, fields=None, answers_only=False):
    """Grade a prediction file; writes the verdicts to `out` (default FILE.verdicts.jsonl); returns
    (summary, graded items, verdicts path)."""
    path = Path(path)
    if not path.exists():
        raise GradeError(f"prediction file {path} does not exist")
    graded = grade_items(read_items(path, fmt, fields, answers_only), benchmark, split, data_dir)
    out = Path(out) if out else path.with_name(path.name + ".verdicts.jsonl")
    write_jsonl(out, graded)
    return summary(graded), graded, out


def _pct(value):
    return f"{100 * value:.1f}%"


def print_report(result, graded, out, show=20, stream=None):
    stream = stream or sys.stdout
    low, high = result["ci95"]
    print(f"accuracy (our grader): {result['correct']}/{result['n']} = {_pct(result['accuracy'])} "
          f"[95% CI {_pct(low)}, {_pct(high)}]; gold from the benchmark for {result['gold_from_benchmark']}",
          file=stream)
    if "file_n" in result:
        low, high = result["file_ci95"]
        print(f"accuracy (the file's verdicts): {result['file_correct']}/{result['file_n']} = "
              f"{_pct(result['file_accuracy'])} [95% CI {_pct(low)}, {_pct(high)}]", file=stream)
        print(f"disagreements: {result['disagreements']} ({result['we_accept_they_reject']} we accept and the file "
              f"rejects, {result['we_reject_they_accept']} the other way)", file=stream)
        for item in [item for item in graded if item["disagree"]][:show]:
            print(f"  {item['where']} [{item['key']}]: pred {item['pred']!r} gold {item['gold']!r}: "
                  f"ours {item['correct']}, file {item['file_correct']}", file=stream)
    for k, entry in (result.get("voting") or {}).get("by_k", {}).items():
        print(f"k={k}: maj@{k} {_pct(entry['maj'])} [{_pct(entry['maj_ci95'][0])}, {_pct(entry['maj_ci95'][1])}]"
              f"  pass@{k} {_pct(entry['pass'])} [{_pct(entry['pass_ci95'][0])}, {_pct(entry['pass_ci95'][1])}]",
              file=stream)
    print(f"verdicts: {out}", file=stream)


def add_arguments(parser):
    parser.add_argument("file", help="a prediction file (JSONL)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--benchmark", help="registry benchmark for gold answers ('math500', 'math:test')")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", help="verdicts JSONL (default FILE.verdicts.jsonl)")
    parser.add_argument("--answers-only", action="store_true",
                        help="grade the file's extracted answers, not its full generations")
    parser.add_argument("--show", type=int, default=20, help="disagreements to print")
    for name, default in (("question", "question"), ("prediction", "prediction"), ("gold", "gold"),
                          ("verdict", "correct"), ("id", "id")):
        parser.add_argument(f"--{name}-field", default=default, help=f"--format jsonl: the {name} field")


def main(args):
    fields = {name: getattr(args, f"{name}_field") for name in ("question", "prediction", "gold", "verdict", "id")}
    result, graded, out = grade_file(args.file, args.fmt, args.benchmark, args.split, args.data_dir, args.out,
                                     fields, args.answers_only)
    print_report(result, graded, out, args.show)
    return 0
