"""Filtering (step 3): synthesized solutions -> the stage-1 (CoT) and stage-2 (code-nested) training sets.

Every row meets the filters in this order; the first one that fails drops it (`dropped.jsonl` says which
and why), and `funnel.json` counts the rows left after each:

1. ``contaminated``: its question, or the seed it was derived from, overlaps a benchmark's test
   questions (`mumath.decontaminate`); rows overlapping a benchmark in `keep_overlapping_with` are kept
   and reported instead (the run is then marked contaminated for that benchmark).
2. ``duplicate_question``: its question repeats an earlier question (same normalized text, or MinHash
   LSH Jaccard >= `dedup_threshold` over word shingles *and* the same numbers, so that an alteration
   with new numbers or a FOBAR question is not a duplicate of its seed).
3. ``format``: CoT: a final ``\\boxed{}``, no code block. Code-nested: ended by end of turn, a ``\\boxed{}``
   after the last execution, at least one execution, the last execution succeeded (no error, no timeout
   left unrecovered), at most `max_rounds` executions, prefix CoT where `require_prefix_cot`.
4. ``length``: at most `max_tokens` tokens of the training tokenizer (chat template included).
5. ``answer``: equal to the reference answer (`grading.is_equivalent`, choices included, the evaluation
   grader); without a reference, equal to the question's pseudo answer (see `vote`).
6. ``duplicate_solution``: repeats a kept solution of the same question and stage (normalized text, or
   MinHash LSH Jaccard >= `dedup_threshold`).
7. ``cap``: more than `max_per_question` kept solutions of that question and stage.

The input is streamed twice (pass 1: per-question checks, validity, lengths, answer votes; pass 2:
answers, dedupe, cap, writing); memory holds a few small fields per row, never the rows themselves,
and no step compares all pairs of rows.
"""
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .decontaminate import BAG_MIN_WORDS, CONTAMINATION_FILE, build_index, normalize_words
from .records import RecordsError, iter_jsonl, jsonl_writer, write_json
from .grading import extract_answer, extract_boxed, is_equivalent, normalize, to_number
from .tir import OUTPUT_MARKER, has_prefix_cot

FILTERS = ("contaminated", "duplicate_question", "format", "length", "answer", "duplicate_solution", "cap")
STAGE_OUTPUTS = {"cot": "stage1", "tir": "stage2"}  # synthesize/<stage>.jsonl -> filter/<output>.jsonl
REQUIRED_FIELDS = ("id", "question_id", "question", "messages")
TIMEOUT_OUTPUT = "TimeoutError: execution timed out"  # what executor.ExecutionResult.as_output writes


class FilterError(ValueError):
    pass


@dataclass
class FilterConfig:
    min_votes: int = 2              # pseudo answer: at least this many agreeing votes ...
    min_share: float = 0.5          # ... and at least this share of the question's votes
    max_rounds: int = 4             # code-nested: at most this many executions (None: no limit)
    require_prefix_cot: bool = True
    min_prefix_words: int = 8
    max_tokens: int = 2048          # training tokenizer tokens, chat template included (None: no limit)
    dedup_threshold: float = 0.85   # MinHash LSH Jaccard over word shingles
    num_perm: int = 128
    shingle_words: int = 5
    max_per_question: int = 4       # per question and stage (None: no cap)
    regrade: bool = False           # grade every row again instead of reusing synthesis's `correct`
    proxy_questions: int = 2000     # questions with a reference on which the pseudo-answer precision is measured
    ngram: int = 13                 # decontamination word n-gram (13: Qwen2-Math; 10: DeepSeekMath)
    ngram_same_numbers: bool = True  # an n-gram match counts only between questions with the same numbers
    bag_jaccard: float = 0.7        # word-order-free decontamination: Jaccard of content words (None: off)
    keep_overlapping_with: tuple = ()


# ---------------------------------------------------------------------------------------------- input

def iter_rows(path):
    """(line number, row) of a synthesize JSONL file; a broken line or a missing field names file:line."""
    rows = iter_jsonl(path)
    while True:
        try:
            number, row = next(rows)
        except StopIteration:
            return
        except RecordsError as error:
            raise FilterError(str(error)) from error
        missing = [field for field in REQUIRED_FIELDS if field not in row]
        if missing:
            raise FilterError(f"{path}:{number}: missing field(s) {missing}")
        if not row["messages"] or row["messages"][-1].get("role") != "assistant":
            raise FilterError(f"{path}:{number}: field 'messages' must end with the assistant's solution")
        yield number, row


def solution_text(row):
    return row["messages"][-1]["content"]


def row_choices(row):
    return row.get("choices") or (row.get("meta") or {}).get("choices")


def row_pred(row):
    return row["pred"] if "pred" in row else extract_answer(solution_text(row))


# ------------------------------------------------------------------------------------------- validity

def cot_format_problem(text):
    """Why a CoT solution is not valid training data, or None."""
    if extract_boxed(text) is None:
        return "no final \\boxed{} answer"
    if "```" in text:
        return "has a code block"
    return None


def tir_format_problem(row, text, config):
    """Why a code-nested solution is not valid training data, or None."""
    if row.get("finish", "eos") != "eos":
        return f"did not end by end of turn (finish: {row.get('finish')})"
    executions = row.get("executions", text.count(OUTPUT_MARKER))
    executions = len(executions) if isinstance(executions, list) else executions  # a raw trajectory's list
    if not executions:
        return "no code execution"
    after = text[text.rfind(OUTPUT_MARKER) + len(OUTPUT_MARKER):]
    closing = after.find("```")
    if closing < 0 or extract_boxed(after[closing + 3:]) is None:
        return "no \\boxed{} answer after the last execution"
    failures = row.get("execution_errors", 0) + row.get("timeouts", 0)
    if row.get("errors_fixed", 0) < failures:  # the last execution failed: nothing after it succeeded
        return "last execution timed out" if _last_output(text).endswith(TIMEOUT_OUTPUT) \
            else "last execution failed"
    if config.max_rounds is not None and executions > config.max_rounds:
        return f"{executions} executions > max_rounds {config.max_rounds}"
    if config.require_prefix_cot and not has_prefix_cot(text, config.min_prefix_words):
        return f"no prefix CoT (fewer than {config.min_prefix_words} words before the first code block)"
    return None


def _last_output(text):
    start = text.rfind(OUTPUT_MARKER) + len(OUTPUT_MARKER)
    end = text.find("```", start)
    return text[start:end if end >= 0 else None].strip()


def format_problem(row, stage, config):
    text = solution_text(row)
    return cot_format_problem(text) if stage == "cot" else tir_format_problem(row, text, config)


# --------------------------------------------------------------------------------------------- length

class TokenCounter:
    """Token counts of chat rows under the training tokenizer, batched through its fast tokenizer.

    A row's count is the tokens of each message's content plus the chat template's own tokens (measured
    once per role sequence by rendering the template around empty messages).
    """

    def __init__(self, tokenizer, batch_size=1024):
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._overhead = {}

    @classmethod
    def from_spec(cls, spec, **kwargs):
        from .models import load_tokenizer

        tokenizer = load_tokenizer(spec)
        if not getattr(tokenizer, "is_fast", False):
            print(f"note: tokenizer '{spec}' has no fast version; length filtering will be slow")
        return cls(tokenizer, **kwargs)

    def overhead(self, roles):
        if roles not in self._overhead:
            empty = [{"role": role, "content": ""} for role in roles]
            try:
                text = self.tokenizer.apply_chat_template(empty, tokenize=False)
            except Exception:  # no chat template: the contents alone
                text = ""
            self._overhead[roles] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        return self._overhead[roles]

    def upper_bound(self, row):
        """A count the row cannot exceed, without tokenizing: a token covers at least one byte of the
        text (byte-level BPE), plus one per message for a SentencePiece word-start marker."""
        return self.overhead(tuple(m["role"] for m in row["messages"])) + \
            sum(len(m["content"].encode()) + 1 for m in row["messages"])

    def count(self, rows):
        """Tokens of each row (one batched tokenizer call for all contents)."""
        contents = [message["content"] for row in rows for message in row["messages"]]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if hasattr(backend, "encode_batch_fast"):  # the Rust tokenizer without offsets: ~20 % less CPU
            encodings = backend.encode_batch_fast(contents, add_special_tokens=False)
            lengths = iter(len(encoding.ids) for encoding in encodings)
        else:
            lengths = iter(len(ids) for ids in self.tokenizer(contents, add_special_tokens=False,
                                                              return_attention_mask=False)["input_ids"])
        return [self.overhead(tuple(m["role"] for m in row["messages"])) +
                sum(next(lengths) for _ in row["messages"]) for row in rows]


# ---------------------------------------------------------------------------------------- pseudo answer

@lru_cache(maxsize=2**18)
def equivalent(pred, gold, choices=None):
    """`grading.is_equivalent`, memoized: the same answer strings recur across samples and rows."""
    return is_equivalent(pred, gold, list(choices) if choices else None)


def answer_key(pred):
    """A cheap key under which equal answers meet before the grader merges the rest: numbers by value."""
    value = to_number(pred)
    return f"#{value:.6g}" if value is not None else normalize(pred).lower()


def vote(preds, min_votes=2, min_share=0.5, max_compare=4):
    """(pseudo answer, its votes, all votes) from one question's sampled answers.

    Answers are grouped by `answer_key` first (linear), then the question's few distinct answers are
    merged when the grader finds them equivalent (the evaluation grader), most common first, each compared
    with at most `max_compare` earlier groups (the largest ones): symbolic comparisons cost milliseconds,
    so a question's cost stays linear in its distinct answers. The largest group wins if it has at least
    `min_votes` votes and `min_share` of the votes; a tie for the largest has no winner.
    """
    counts = Counter()
    first = {}
    for pred in preds:
        if pred is None or not str(pred).strip():
            continue
        key = answer_key(pred)
        counts[key] += 1
        first.setdefault(key, str(pred))
    groups = []  # [representative answer, votes]
    for key, votes in counts.most_common():
        for group in groups[:max_compare]:
            if equivalent(first[key], group[0]):
                group[1] += votes
                break
        else:
            groups.append([first[key], votes])
    total = sum(counts.values())
    if not groups:
        return None, 0, 0
    groups.sort(key=lambda group: -group[1])
    best, votes = groups[0]
    if len(groups) > 1 and groups[1][1] == votes:
        return None, votes, total  # a tie: no pseudo answer
    if votes < min_votes or votes < min_share * total:
        return None, votes, total
    return best, votes, total


# ------------------------------------------------------------------------------------------- dedupe

class NearDuplicates:
    """MinHash LSH (datasketch) over word shingles; `extra` must also match (e.g. a question's numbers)."""

    def __init__(self, threshold=0.85, num_perm=128, shingle_words=5):
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        try:
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError as error:
            raise FilterError(f"parameters 'dedup_threshold' {threshold} and 'num_perm' {num_perm}: {error}; "
                              "use a lower threshold or more permutations") from error
        self.num_perm, self.shingle_words, self.threshold = num_perm, shingle_words, threshold
        self.seed_hash = MinHash(num_perm=num_perm)  # permutations computed once, shared by every MinHash
        self.extra = {}

    def signature(self, words, salt=""):
        """MinHash of the word shingles (`salt` makes signatures of different groups unrelated).

        Each word is hashed once (crc32: stable across runs); a shingle's hash is a polynomial of its
        words' hashes, computed for all shingles at once with numpy.
        """
        hashes = np.fromiter((zlib.crc32(word.encode()) for word in words), dtype=np.uint64, count=len(words))
        width = min(self.shingle_words, len(words)) or 1
        shingles = np.full(max(1, len(words) - width + 1), zlib.crc32(salt.encode()), dtype=np.uint64)
        for offset in range(min(width, len(words))):
            shingles = shingles * np.uint64(1000003) + hashes[offset:offset + len(shingles)]
        minhash = self._minhash(num_perm=self.num_perm, hashfunc=int, permutations=self.seed_hash.permutations,
                                 scheme=self.seed_hash.scheme)
        minhash.update_batch((shingles ^ (shingles >> np.uint64(32))) & np.uint64(0xFFFFFFFF))
        return minhash

    def find(self, minhash, extra=None):
        """A kept key whose signature is near this one (and whose `extra` is equal), or None."""
        for key in self.lsh.query(minhash):
            if self.extra.get(key) == extra:
                return key
        return None

    def add(self, key, minhash, extra=None):
        self.lsh.insert(key, minhash, check_duplication=False)
        if extra is not None:
            self.extra[key] = extra


def numeric_words(words):
    """A question's normalized words that are numbers, sorted: near-duplicates must share them."""
    return tuple(sorted(word for word in words if word[0].isdigit()))


# -------------------------------------------------------------------------------------------- funnel

class Funnel:
    """Rows left after each filter, per stage and per augmentation method."""

    def __init__(self):
        self.dropped = defaultdict(Counter)   # (stage, method) -> filter -> rows
        self.rows = Counter()                 # (stage, method) -> rows in

    def count(self, stage, method, dropped_by):
        self.rows[(stage, method)] += 1
        if dropped_by:
            self.dropped[(stage, method)][dropped_by] += 1

    def _left(self, keys):
        left = sum(self.rows[key] for key in keys)
        steps = {"input": left}
        for name in FILTERS:
            left -= sum(self.dropped[key][name] for key in keys)
            steps[name] = left
        return steps

    def to_dict(self):
        stages = sorted({stage for stage, _ in self.rows})
        return {"filters": ["input", *FILTERS],
                "stages": {stage: self._left([k for k in self.rows if k[0] == stage]) for stage in stages},
                "by_method": {stage: {method: self._left([(stage, method)])
                                      for method in sorted({m for s, m in self.rows if s == stage})}
                              for stage in stages}}


def funnel_figure(funnel):
    """Horizontal bars: rows left after each filter, one panel per stage (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    stages = funnel.get("stages") or {}
    figure = Figure(figsize=(5 * max(1, len(stages)), 3.2))
    for position, (stage, steps) in enumerate(stages.items(), 1):
        axes = figure.add_subplot(1, len(stages), position)
        names = list(steps)[::-1]
        values = [steps[name] for name in names]
        axes.barh(names, values, color="tab:blue")
        for y, value in enumerate(values):
            axes.text(value, y, f" {value}", va="center", fontsize=8)
        axes.set_title(f"{stage} -> {STAGE_OUTPUTS.get(stage, stage)}: rows left after each filter", fontsize=9)
        axes.set_xlim(0, max(values + [1]) * 1.15)
    figure.tight_layout()
    return figure


def plot_funnel(funnel, path):
    funnel_figure(funnel).savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------- the step

class _Pass1:
    """Per-row verdicts of the filters that need no other row's answer: contamination of the row's own
    question, duplicate questions, format, length; and the answer votes."""

    def __init__(self, config, index, counter):
        self.config, self.index, self.counter = config, index, counter
        self.questions = NearDuplicates(config.dedup_threshold, config.num_perm, config.shingle_words)
        self.question_verdict = {}    # question id -> (filter, detail) or None
        self.contamination = {}       # question id -> {benchmark: match}
        self.seed_questions = {}      # seed id -> question text (for contamination through the seed)
        self.exact_questions = {}     # normalized question -> question id
        self.verdicts = {}            # (stage, row number) -> (filter, detail), for rows dropped in pass 1
        self.votes = defaultdict(list)  # question id -> answers of the rows that pass pass-1 filters
        self.references = {}          # question id -> (reference, choices)
        self._pending = []            # rows waiting for a batched token count
        self.tokenized = 0            # rows whose length needed the tokenizer

    def question(self, row):
        qid = row["question_id"]
        if qid in self.question_verdict:
            return self.question_verdict[qid]
        words = normalize_words(row["question"])
        self.contamination[qid] = self.index.lookup(row["question"]) if self.index else {}
        verdict = None
        key = " ".join(words)
        if key in self.exact_questions:
            verdict = ("duplicate_question", f"same text as question {self.exact_questions[key]}")
        else:
            self.exact_questions[key] = qid
            signature = self.questions.signature(words)
            numbers = numeric_words(words)
            near = self.questions.find(signature, numbers)
            if near is not None:
                verdict = ("duplicate_question", f"near duplicate of question {near}")
            else:
                self.questions.add(qid, signature, numbers)
        self.question_verdict[qid] = verdict
        return verdict

    def add(self, stage, number, row):
        if row.get("method", "seed") == "seed":
            self.seed_questions.setdefault(row["question_id"], row["question"])
        if row.get("answer") is not None:
            self.references.setdefault(row["question_id"], (row["answer"], row_choices(row)))
        verdict = self.question(row)
        if verdict is None:
            problem = format_problem(row, stage, self.config)
            verdict = ("format", problem) if problem else None
        if verdict is not None:
            self.verdicts[(stage, number)] = verdict
        else:
            if self.counter is not None and self.config.max_tokens is not None \
                    and self.counter.upper_bound(row) > self.config.max_tokens:
                self._pending.append((stage, number, row["question_id"], row_pred(row),
                                      {"messages": row["messages"]}))
                if len(self._pending) >= self.counter.batch_size:
                    self.flush()
            else:
                self.votes[row["question_id"]].append(row_pred(row))

    def flush(self):
        if not self._pending:
            return
        lengths = self.counter.count([item[4] for item in self._pending])
        self.tokenized += len(lengths)
        for (stage, number, qid, pred, _), tokens in zip(self._pending, lengths):
            if tokens > self.config.max_tokens:
                self.verdicts[(stage, number)] = ("length", f"{tokens} tokens > max_tokens {self.config.max_tokens}")
            else:
                self.votes[qid].append(pred)
        self._pending = []


def _contamination_of(row, pass1):
    """{benchmark: match} for the row's own question and the seed question it was derived from."""
    found = dict(pass1.contamination.get(row["question_id"], {}))
    seed_id = row.get("seed_id")
    if seed_id and seed_id != row["question_id"]:
        if seed_id not in pass1.contamination and seed_id in pass1.seed_questions:
            pass1.contamination[seed_id] = pass1.index.lookup(pass1.seed_questions[seed_id]) if pass1.index else {}
        for name, match in pass1.contamination.get(seed_id, {}).items():
            found.setdefault(name, dict(match, match=f"seed {match['match']}", seed_id=seed_id))
    return found


def pseudo_answers(pass1, config):
    """Question id -> pseudo answer (questions without a reference), and the precision proxy: the same vote
    run on questions that do have a reference, compared with it."""
    answers, agree, voted, sampled = {}, 0, 0, 0
    for qid, preds in pass1.votes.items():
        if qid in pass1.references:
            if sampled >= config.proxy_questions:
                continue
            sampled += 1
        answer, _, _ = vote(preds, config.min_votes, config.min_share)
        if qid not in pass1.references:
            answers[qid] = answer
        elif answer is not None:
            voted += 1
            reference, choices = pass1.references[qid]
            agree += equivalent(answer, reference, tuple(choices) if choices else None)
    without_reference = [qid for qid in pass1.question_verdict if qid not in pass1.references]
    stats = {"questions_without_reference": len(without_reference),
             "with_pseudo_answer": sum(1 for qid in without_reference if answers.get(qid) is not None),
             "reference_questions_voted": sampled,
             "reference_questions_with_a_vote_winner": voted,
             "winner_agrees_with_reference": agree,
             "precision_proxy": round(agree / voted, 4) if voted else None}
    return answers, stats


def answer_problem(row, pseudo, regrade=False):
    """Why the row's answer is not right, or None; plus the row's answer label.

    Synthesis grades each row with the evaluation grader (`correct`); that verdict is reused unless
    `regrade` or the row has none (e.g. a hand-made row).
    """
    pred = row_pred(row)
    if row.get("answer") is not None:
        choices = row_choices(row)
        stored = row.get("correct") if not regrade else None
        if stored if isinstance(stored, bool) else equivalent(pred, str(row["answer"]),
                                                               tuple(choices) if choices else None):
            return None, "reference"
        return f"answer {pred!r} != reference {row['answer']!r}", "reference"
    answer = pseudo.get(row["question_id"])
    if answer is None:
        return "no pseudo answer (too few votes, too small a majority, or a tie)", "pseudo"
    if not equivalent(pred, answer):
        return f"answer {pred!r} != pseudo answer {answer!r}", "pseudo"
    return None, "pseudo"


def input_files(synth_dir):
    files = {stage: Path(synth_dir) / f"{stage}.jsonl" for stage in STAGE_OUTPUTS}
    files = {stage: path for stage, path in files.items() if path.exists()}
    if not files:
        raise FilterError(f"nothing to filter: no {' or '.join(f'{s}.jsonl' for s in STAGE_OUTPUTS)} in {synth_dir}")
    return files


def filter_rows(files, out_dir, config=None, index=None, unavailable=None, counter=None, seed_questions=None,
                progress=True):
    """Filter synthesize JSONL files ({stage: path}) into `out_dir`; returns the statistics.

    `index` is a `decontaminate.ContaminationIndex` (None: no decontamination), `counter` a `TokenCounter`
    (None: no length filter), `seed_questions` maps seed ids to their text (augmented rows are checked
    through their seed too; the seeds' own rows fill in the rest). Outputs are written to temporary
    files and renamed at the end, so a failure leaves the previous outputs as they were.
    """
    config = config or FilterConfig()
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pass1 = _Pass1(config, index, counter)
    pass1.seed_questions.update(seed_questions or {})
    total = 0
    for stage, path in files.items():
        for number, row in tqdm(iter_rows(path), desc=f"filter {stage}: checks", disable=not progress):
            pass1.add(stage, number, row)
            total += 1
        pass1.flush()
    pseudo, pseudo_stats = pseudo_answers(pass1, config)

    funnel, keep = Funnel(), set(config.keep_overlapping_with)
    solutions = NearDuplicates(config.dedup_threshold, config.num_perm, config.shingle_words)
    exact_solutions, per_question = set(), Counter()
    overlap = defaultdict(lambda: {"rows": 0, "kept_rows": 0, "questions": set(), "by_match": Counter(),
                                   "examples": []})
    kept_counts = Counter()
    with jsonl_writer(out_dir / "dropped.jsonl") as write_dropped:
        for stage, path in files.items():
            with jsonl_writer(out_dir / f"{STAGE_OUTPUTS[stage]}.jsonl") as write_kept:
                for number, row in tqdm(iter_rows(path), desc=f"filter {stage}: answers, dedupe",
                                        disable=not progress):
                    verdict, label = None, None
                    found = _contamination_of(row, pass1)
                    for name, match in found.items():
                        _note_overlap(overlap[name], row, match)
                    blocking = sorted(set(found) - keep)
                    if blocking:
                        verdict = ("contaminated", "; ".join(
                            f"{name}: {found[name]['match']} match with {found[name]['test_id']}" for name in blocking))
                    verdict = verdict or pass1.verdicts.get((stage, number))
                    if verdict is None:
                        problem, label = answer_problem(row, pseudo, config.regrade)
                        verdict = ("answer", problem) if problem else None
                    if verdict is None:
                        verdict = _solution_duplicate(row, stage, solutions, exact_solutions)
                    if verdict is None:
                        group = (stage, row["question_id"])
                        if config.max_per_question is not None and per_question[group] >= config.max_per_question:
                            verdict = ("cap", f"question already has {config.max_per_question} solutions")
                        else:
                            per_question[group] += 1
                    method = row.get("method", "seed")
                    funnel.count(stage, method, verdict[0] if verdict else None)
                    if verdict:
                        write_dropped({"id": row["id"], "stage": stage, "filter": verdict[0],
                                       "detail": verdict[1], "question_id": row["question_id"], "method": method})
                        continue
                    for name in found:
                        overlap[name]["kept_rows"] += 1
                    kept_counts[stage] += 1
                    row["answer_source"] = label
                    row["pseudo_answer"] = pseudo.get(row["question_id"]) if label == "pseudo" else None
                    write_kept(row)

    funnel = funnel.to_dict()
    contamination = _contamination_report(index, unavailable or {}, overlap, keep, config.ngram)
    stats = {"rows_in": total, "rows_kept": dict(kept_counts),
             "outputs": {stage: f"{STAGE_OUTPUTS[stage]}.jsonl" for stage in files},
             "dropped_by_filter": {stage: {name: steps[previous] - steps[name]
                                           for previous, name in zip(["input", *FILTERS], FILTERS)}
                                   for stage, steps in funnel["stages"].items()},
             "pseudo_answers": pseudo_stats,
             "rows_tokenized": pass1.tokenized,
             "contaminated_for": contamination["contaminated_for"],
             "seconds": round(time.time() - started, 2), "config": config.__dict__}
    write_json(out_dir / "funnel.json", funnel)
    write_json(out_dir / CONTAMINATION_FILE, contamination)
    write_json(out_dir / "stats.json", stats)
    plot_funnel(funnel, out_dir / "funnel.png")
    return stats


def _solution_duplicate(row, stage, solutions, exact_solutions):
    words = normalize_words(solution_text(row))
    key = (stage, row["question_id"], hash(" ".join(words)))
    if key in exact_solutions:
        return ("duplicate_solution", "same normalized text as a kept solution")
    salt = f"{stage}\x00{row['question_id']}"  # only solutions of the same question and stage can meet
    signature = solutions.signature(words, salt)
    near = solutions.find(signature)
    if near is not None:
        return ("duplicate_solution", f"near duplicate of {near}")
    exact_solutions.add(key)
    solutions.add(row["id"], signature)
    return None


def _note_overlap(entry, row, match):
    entry["rows"] += 1
    entry["questions"].add(row["question_id"])
    entry["by_match"][match["match"]] += 1
    if len(entry["examples"]) < 5 and row["question_id"] not in {e["question_id"] for e in entry["examples"]}:
        entry["examples"].append({"question_id": row["question_id"], "question": row["question"][:300],
                                  "match": match["match"], "test_id": match["test_id"],
                                  "test_question": match["test_question"][:300]})


def _contamination_report(index, unavailable, overlap, keep, n):
    benchmarks = {}
    for name in (index.benchmarks if index else []):
        entry = overlap.get(name)
        benchmarks[name] = {
            "test_questions": index.sizes[name], "rows": entry["rows"] if entry else 0,
            "questions": len(entry["questions"]) if entry else 0,
            "kept_rows": entry["kept_rows"] if entry else 0,
            "action": "kept (keep_overlapping_with)" if name in keep else "dropped",
            "by_match": dict(entry["by_match"]) if entry else {},
            "examples": entry["examples"] if entry else []}
    return {"ngram": n, "bag_jaccard": index.bag_jaccard if index else None, "bag_min_words": BAG_MIN_WORDS,
            "checked": bool(index), "benchmarks": benchmarks, "unavailable": unavailable,
            "contaminated_for": sorted(name for name, entry in benchmarks.items() if entry["kept_rows"])}


def run_filter(run_dir, synth_dir=None, data_dir=None, extra_benchmarks=None, decontaminate_benchmarks=None,
               tokenizer="embedded", config=None, progress=True, push_to_hub=False, hub_repo_id=None,
               hub_private=True):
    """Step 3 of a run: <run_dir>/synthesize/{cot,tir}.jsonl -> <run_dir>/filter/ (see the module docs), with
    a dataset card (filter/README.md); `push_to_hub` uploads the kept data and the card to `hub_repo_id`."""
    from .cards import CardError, push_dataset, write_dataset_card
    from .manifest import record_inputs

    if push_to_hub and (not hub_repo_id or str(hub_repo_id).count("/") != 1):
        raise CardError(f"parameter 'push_to_hub' is on and 'hub_repo_id' is {hub_repo_id!r}: set it to "
                        "'<user or org>/<name>'")

    config = config or FilterConfig()
    files = input_files(synth_dir or Path(run_dir) / "synthesize")
    inputs = [str(path) for path in files.values()]
    index, unavailable = build_index(config.ngram, data_dir, extra_benchmarks, decontaminate_benchmarks, inputs,
                                     config.ngram_same_numbers, config.bag_jaccard)
    for name, reason in unavailable.items():
        print(f"warning: decontamination could not check '{name}': {reason}")
    counter = TokenCounter.from_spec(tokenizer) if config.max_tokens is not None else None
    record_inputs(run_dir, inputs)
    stats = filter_rows(files, Path(run_dir) / "filter", config, index, unavailable, counter,
                        seed_questions_of(Path(run_dir) / "augment" / "questions.jsonl"), progress)
    write_dataset_card(Path(run_dir) / "filter", run_dir)
    if push_to_hub:
        stats["hub_commit"] = push_dataset(Path(run_dir) / "filter", hub_repo_id, hub_private)
    return stats


def seed_questions_of(questions_file):
    """Seed id -> seed question text, from the augment step's questions (their `meta.seed_question`)."""
    from .records import read_jsonl

    return {row["seed_id"]: row["meta"]["seed_question"] for row in read_jsonl(questions_file)
            if row.get("seed_id") and (row.get("meta") or {}).get("seed_question")}
