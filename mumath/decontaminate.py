"""Decontamination: training questions against the test questions of every registered benchmark.

Three checks, after one normalization (lower case, `1,000` -> `1000`, punctuation and whitespace dropped:
a question becomes its sequence of words and numbers):

- **exact**: the normalized question equals a normalized test question;
- **n-gram**: the question shares a run of `n` consecutive words with a test question (13 by default, as
  Qwen2-Math; DeepSeekMath uses 10) *and* has the same numbers, counted with repetition (`same_numbers`,
  default on). A question shorter than `n` words counts as one n-gram (exact only). Why the numbers:
  competition sets are full of templated problems ("Convert the point $(0,3)$ in rectangular coordinates
  to polar coordinates. Enter your answer ...") that share long n-grams but differ in their numbers and
  answers; they are different problems. Of the 4500 MATH test problems outside MATH500, 91 share a
  13-gram with a MATH500 problem; 6 also share its numbers (siblings: the same setup, another question
  asked). A test question reworded around its own numbers is still caught.

- **bag** (word order does not matter): the question's set of content words and numbers (`bag_of`: stop
  words dropped) has a Jaccard similarity of at least `bag_jaccard` (0.7 by default) with a test question's,
  and both have the same numbers, counted with repetition. This catches a short test question whose sentences
  were reordered (which breaks every 13-gram) and one whose names were changed as well. It is for word
  problems: a question with LaTeX math (`$`, `\\`) or fewer than `BAG_MIN_WORDS` content words is left to
  the exact and n-gram checks, because there word order and symbols carry the meaning (MATH's "Compute
  $\\arccos(-1/2)$" and "Compute $\\arcsin(-1/2)$" have the same bag; at 0.7 the bag check flagged 22 of
  MATH train_offline against MATH500 with LaTeX included, most of them such siblings, and none without). Candidates come from
  a MinHash LSH index (datasketch, 128 permutations) over the test questions' bags; each is confirmed with
  the exact Jaccard. The threshold and how it was chosen: docs/user-benchmarks.md, "Decontamination".

The test sets are indexed once (each n-gram hashed to an int -> the benchmarks and test rows that hold it);
training questions are then checked one by one in O(their length), memoized per question, so the cost is
linear in the training data. The result of a run's filter step lands in ``<run>/filter/contamination.json``;
`evaluation_contamination` reads it when that run is evaluated, so a benchmark that its training data
overlaps is flagged (``contaminated: true`` in the metrics, and a warning).
"""
import json
import re
import sys
from pathlib import Path

WORD = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
CONTAMINATION_FILE = "contamination.json"


def normalize_words(text):
    """Words and numbers of `text`, lower case: 'It costs $1,000.' -> ['it', 'costs', '1000']."""
    return WORD.findall(THOUSANDS.sub("", str(text).lower()))


def normalize_text(text):
    """One string per question (or solution) for exact matching: case, spacing, punctuation, `1,000`."""
    return " ".join(normalize_words(text))


def numbers_of(words):
    return tuple(sorted(word for word in words if word[0].isdigit()))


STOP_WORDS = frozenset("""a an the and or but if then than so of to in on at by for with from into onto over
under about after before during as is are was were be been being am do does did has have had having it its
this that these those there here he she they we you i me him her them us my your his their our what which who
whom whose how many much each every per all any some no not one's""".split())


BAG_MIN_WORDS = 8
# A LaTeX command, or math between dollars ($x$, $y=ax^2$, $(h,k)$); not currency ("$50 and ... $300").
LATEX = re.compile(r"\\[a-zA-Z]+|\$[^$\s]*[a-zA-Z=^_{}()][^$\s]*\$")


def bag_applies(question, bag):
    """Whether the bag check is meaningful for this question: a word problem of some length."""
    return len(bag) >= BAG_MIN_WORDS and not LATEX.search(str(question))


def bag_of(words):
    """The content words and numbers of a question, as a set (its word order and repetitions dropped)."""
    return frozenset(word for word in words if word not in STOP_WORDS and (len(word) > 1 or word.isdigit()))


def jaccard(first, second):
    return len(first & second) / len(first | second) if first or second else 0.0


def ngram_hashes(words, n):
    """Hashes of every run of `n` consecutive words (the whole text when it is shorter than `n`).

    Python's string hash: salted per process, but the index and the lookups live in one process, and a
    64-bit collision among a few million n-grams is vanishingly unlikely.
    """
    if len(words) < n:
        return {hash(" ".join(words))} if words else set()
    return {hash(" ".join(words[start:start + n])) for start in range(len(words) - n + 1)}


class ContaminationIndex:
    """The test questions of several benchmarks, indexed for exact and n-gram lookups."""

    def __init__(self, n=13, same_numbers=True, bag_jaccard=0.7, num_perm=128):
        self.n, self.same_numbers, self.bag_jaccard, self.num_perm = n, same_numbers, bag_jaccard, num_perm
        self.bags = []              # test row index -> its bag of words
        self.lsh = None             # MinHash LSH over the bags (built on the first `add` with bag_jaccard set)
        self.benchmarks = []        # names, by index
        self.sizes = {}             # name -> test questions indexed
        self.test_rows = []         # (benchmark index, id, question, its numbers)
        self.exact = {}             # normalized question -> tuple of test row indices
        self.grams = {}             # n-gram hash -> tuple of test row indices

    def add(self, name, records):
        """Index the test `records` ({id, question, ...}) of benchmark `name`."""
        bench = len(self.benchmarks)
        self.benchmarks.append(name)
        self.sizes[name] = len(records)
        for record in records:
            row = len(self.test_rows)
            words = normalize_words(record["question"])
            self.test_rows.append((bench, record["id"], record["question"], numbers_of(words)))
            key = " ".join(words)
            self.exact[key] = self.exact.get(key, ()) + (row,)
            for gram in ngram_hashes(words, self.n):
                self.grams[gram] = self.grams.get(gram, ()) + (row,)
            self._add_bag(row, record["question"], words)

    def _minhash(self, bag):
        from datasketch import LeanMinHash, MinHash

        minhash = MinHash(num_perm=self.num_perm, seed=1)
        minhash.update_batch([word.encode() for word in sorted(bag)])
        return LeanMinHash(minhash)

    def _add_bag(self, row, question, words):
        bag = bag_of(words)
        self.bags.append(bag)
        if self.bag_jaccard is None or not bag_applies(question, bag):
            return
        if self.lsh is None:
            from datasketch import MinHashLSH

            # Candidates only (each is confirmed with the exact Jaccard), so the LSH leans to recall: a lower
            # threshold and false negatives weighted 4:1. Short bags make MinHash estimates noisy.
            self.lsh = MinHashLSH(threshold=max(0.3, self.bag_jaccard - 0.2), num_perm=self.num_perm,
                                  weights=(0.2, 0.8))
        self.lsh.insert(row, self._minhash(bag))

    def bag_matches(self, question, words):
        """Test rows whose bag has Jaccard >= `bag_jaccard` with this question's bag and the same numbers."""
        bag = bag_of(words)
        if self.lsh is None or not bag_applies(question, bag):
            return []
        numbers = numbers_of(words)
        return sorted(row for row in self.lsh.query(self._minhash(bag))
                      if self.test_rows[row][3] == numbers and jaccard(bag, self.bags[row]) >= self.bag_jaccard)

    def lookup(self, question):
        """{benchmark: {"match": "exact" | "ngram", "test_id", "test_question"}} for one question."""
        words = normalize_words(question)
        found = {}
        for row in self.exact.get(" ".join(words), ()):
            self._note(found, row, "exact")
        numbers = numbers_of(words)
        for gram in ngram_hashes(words, self.n):
            for row in self.grams.get(gram, ()):
                if not self.same_numbers or self.test_rows[row][3] == numbers:
                    self._note(found, row, "ngram")
        for row in self.bag_matches(question, words):
            self._note(found, row, "bag")
        return found

    def _note(self, found, row, match):
        bench, test_id, test_question, _ = self.test_rows[row]
        name = self.benchmarks[bench]
        if name not in found:
            found[name] = {"match": match, "test_id": test_id, "test_question": test_question}


def test_benchmarks(extra_benchmarks=None, only=None):
    """Names of the registered benchmarks (built-in + `extra_benchmarks`) that have a `test` split."""
    from .data import registry

    entries = registry(extra_benchmarks)
    names = [name for name, entry in entries.items() if "test" in entry["splits"]]
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"parameter 'decontaminate_benchmarks': {unknown} are not registered benchmarks "
                             f"with a test split; known: {names}")
        names = [name for name in names if name in only]
    return names


def build_index(n=13, data_dir=None, extra_benchmarks=None, only=None, inputs=None, same_numbers=True,
                bag_jaccard=0.7):
    """Index the test split of every registered benchmark -> (index, {name: why it could not be loaded}).

    A benchmark whose data cannot be read (no local file, hub unreachable) is reported, not fatal:
    its contamination is then unknown, and `contamination.json` says so.
    """
    from .data import DataError, load_benchmark

    index, unavailable = ContaminationIndex(n, same_numbers, bag_jaccard), {}
    for name in test_benchmarks(extra_benchmarks, only):
        try:
            records = load_benchmark(name, "test", data_dir=data_dir, extra=extra_benchmarks, inputs=inputs)
        except DataError as error:
            unavailable[name] = str(error)
            continue
        index.add(name, records)
    return index, unavailable


def evaluation_contamination(run_dir, benchmark):
    """For evaluation: True if this run's filtered training data overlaps `benchmark`'s test questions.

    False when the filter checked that benchmark and kept no overlapping row; None when it is unknown
    (no filter output in `run_dir`, the benchmark could not be checked, or a split other than `test`).
    Prints a warning when True.
    """
    path = Path(run_dir) / "filter" / CONTAMINATION_FILE
    name, _, split = str(benchmark).partition(":")
    if not path.exists() or split not in ("", "test"):
        return None
    report = json.loads(path.read_text())
    entry = report.get("benchmarks", {}).get(name)
    if entry is None:
        return None
    if entry["kept_rows"] > 0:
        print(f"warning: {benchmark}: the training data of this run overlaps its test questions "
              f"({entry['kept_rows']} training rows, see {path}); its metrics are marked "
              f"'contaminated: true'", file=sys.stderr)
        return True
    return False
