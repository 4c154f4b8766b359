"""Solutions from the seed data's own reference rationales: correct stage-1 and stage-2 data without a teacher.

Why this exists: offline, the only teacher is the embedded 135M model, whose solutions are rarely right
and whose code almost never runs. The seeds carry their own worked solutions, so they are turned into the
two training formats here. This is a *substitute* for a strong teacher where none is at hand, not the
paper's method (MuMath-Code has GPT-4 write the solutions).

- Stage 1 (CoT): a GSM8K rationale with its calculator annotations (``<<48/2=24>>``) stripped and the
  ``#### 72`` line turned into ``\\boxed{72}``; a MATH solution as written (it ends in ``\\boxed{}``).
- Stage 2 (code-nested), GSM8K: every annotated line becomes a python block (quantities named from the
  words after the result where the text allows, ``clips_in_may = 48 / 2``), run in the sandbox, its real
  output in the ```` ```output ```` block exactly as the tool loop writes it (`tir.format_output`). With
  ``blocks="solution"`` all steps share one block that prints the final quantity. Plain arithmetic the
  text writes without an annotation (``20/4 = $5``) is annotated first, so it runs and is checked too. A
  step whose executed value disagrees with its annotation drops the solution (counted as
  ``disagreement``, or ``disagreement_text`` for unannotated arithmetic); a rationale whose final answer
  no step computes is dropped too (``answer_not_computed``).
- Augmented questions: a rephrasing keeps its seed's numbers and answer, so the seed's rationale solves it
  and is used as is. A FOBAR question (one number of the seed masked as X) gets a code-nested solution
  that rebuilds the seed's computation with X as a sympy symbol and solves ``final == answer``; it is kept
  only when the solver returns exactly the masked number. Alterations (no known answer) and BF-Trans
  questions (rewritten by the teacher, so the seed's steps need not match) get none.
"""
import ast
import builtins
import keyword
import math
import re
from collections import Counter
from dataclasses import dataclass, field

from .grading import extract_answer, extract_boxed, is_equivalent
from .prompts import user_message
from .tir import format_output, has_prefix_cot

ANNOTATION = re.compile(r"<<([^<>]*)=([^<>=]*)>>")
WRITTEN_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
QUESTION_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?|(?<![\w\d])\.\d+")
BLOCK_MODES = ("step", "solution")
TEACHER = "reference"
# Words that do not make a quantity's name on their own (articles, linking words, bare units of money).
STOP_WORDS = {
    "a", "an", "the", "of", "in", "on", "at", "to", "and", "or", "so", "that", "which", "is", "are", "was",
    "were", "be", "been", "for", "from", "with", "by", "as", "than", "then", "this", "it", "its", "he", "she",
    "they", "we", "you", "his", "her", "their", "more", "less", "left", "now", "all", "total", "altogether",
    "each", "if", "will", "would", "can", "has", "have", "had", "do", "does", "did", "there", "dollars",
    "dollar", "cents", "times", "x", "but", "not", "after", "before", "into", "out", "up", "down",
}
RESERVED = set(keyword.kwlist) | set(dir(builtins)) | {"X", "sympy", "solve", "symbols", "nsimplify", "Eq"}
MAX_NAME_WORDS = 3


class ConversionError(ValueError):
    """A rationale that cannot become a code-nested solution; `reason` is the counter it goes to."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Step:
    """One annotated computation of a rationale."""
    expression: str  # the annotation's left side, as python (``48 / 2``)
    result: float  # the annotation's right side
    name: str | None  # a python name from the text, or None
    line: int  # index of the rationale line it is on
    written: str = ""  # the result as the annotation writes it ('0.33'): its precision
    from_text: bool = False  # arithmetic the text wrote without a calculator annotation


@dataclass
class Rationale:
    lines: list  # the rationale's lines before '####', annotations kept
    answer: str  # what follows '####' (commas removed)
    steps: list = field(default_factory=list)


# ---------------------------------------------------------------- parsing GSM8K rationales

def split_rationale(text):
    """A GSM8K answer -> (lines before '####', final answer without thousands separators)."""
    if "####" not in text:
        raise ConversionError("no_final_answer", "the rationale has no '#### answer' line")
    body, _, answer = text.rpartition("####")
    lines = [line.rstrip() for line in body.strip().splitlines() if line.strip()]
    return lines, answer.strip().replace(",", "")


# Arithmetic written in the text without an annotation: '20/4 = $5', '$40 − $4 = $36'.
_NUM = r"\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_OPERATOR = r"[-+*/×x÷−^]"
# The result must be a whole number, not the start of a fraction ('= 1/4') or of a chain ('= 24 + 2 = 26').
TEXT_EQUATION = re.compile(rf"(?<![\w.,:<=>/*+-])({_NUM}(?:\s*{_OPERATOR}\s*{_NUM})+)\s*=\s*\$?(\d[\d,]*(?:\.\d+)?)"
                           rf"(?![\d<]|\s*{_OPERATOR}\s*[$\w(])")


def annotate_text_equations(line):
    """Give unannotated arithmetic in a line the annotation a calculator would have added, so that it is
    executed and checked like the rest ('20/4 = $5' -> '20/4 = $<<20/4=5>>5'). Text that is not plain
    arithmetic is left alone. Returns the line and the positions of the annotations it added."""
    pieces, position, added, length = [], 0, [], 0
    for match in TEXT_EQUATION.finditer(line):
        if _inside_annotation(line, match.start()) or not _stands_alone(line, match):
            continue
        try:
            expression = to_python(match.group(1).replace("$", "").replace("−", "-"))
        except ConversionError:
            continue
        result_at = match.start(2)
        pieces.append(line[position:result_at])
        length += result_at - position
        added.append(length)
        annotation = f"<<{expression}={match.group(2).replace(',', '')}>>"
        pieces.append(annotation)
        length += len(annotation)
        position = result_at
    return "".join(pieces) + line[position:], added


def _stands_alone(line, match):
    """Plain arithmetic only: not the tail of a longer expression, a mixed number ('8 x 1 1/2'), algebra
    ('M + 4 + 2 = 8', '= 3S + 1', '= 16 + x') or a clock time ('6:00+48'); the result not the start of
    '5 and 2/3'."""
    after = line[match.end():]
    if _continues_expression(line[:match.start()]) or match.group(1).count("/") > 1:
        return False  # ... and '25 / 1/3' (people mean 25 / (1/3), python reads (25 / 1) / 3)
    return not re.match(r"\s*(?:\d|[/:(%]|and\s+[$\d(])|[A-Za-z]", after)


def _continues_expression(before):
    """Whether arithmetic starting right after `before` is the tail of something longer: a number or
    operator before it ('8 x 1 1/2', '+ 12 - 18'), a variable ('M + 4'), 'and' ('1 and 1/4'), or a
    clock time ('6:00')."""
    return bool(re.search(r"[:.]$", before) or
                re.search(r"(?:\d|[-+*/×x÷−^(]|\b[A-Za-z]|\band)$", before.rstrip()))


def _inside_annotation(line, position):
    return line.rfind("<<", 0, position) > line.rfind(">>", 0, position)


def strip_annotations(text):
    return ANNOTATION.sub("", text)


def to_python(expression):
    """An annotation's arithmetic as normalized python source (``48/2`` -> ``48 / 2``), or ConversionError."""
    source = expression.strip().replace("^", "**").replace("x", "*").replace("×", "*").replace("÷", "/")
    source = re.sub(r"(?<=\d),(?=\d{3}\b)", "", source)  # thousands separators
    source = source.replace("%", "/100")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        raise ConversionError("unparsable_annotation", expression) from error
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)
    if not all(isinstance(node, allowed) for node in ast.walk(tree)):
        raise ConversionError("unparsable_annotation", expression)
    return ast.unparse(tree)


def parse_number(text):
    try:
        return float(text.strip().replace(",", "").replace("$", "").rstrip("%"))
    except ValueError:
        raise ConversionError("unparsable_annotation", f"result {text!r} is not a number") from None


def name_from_text(after):
    """A snake_case name from the words after a result (``24 clips in May.`` -> ``clips_in_may``), or None."""
    words = []
    for token in after.split():
        word = token.strip("\"'()").rstrip(".,;:!?").lower()
        if not re.fullmatch(r"[a-z]+(?:'s)?", word) or len(words) >= MAX_NAME_WORDS:
            break
        words.append(word.replace("'s", ""))
        if token.rstrip("\"')")[-1:] in ".,;:!?":
            break
    while words and words[0] in STOP_WORDS:
        words.pop(0)
    while words and words[-1] in STOP_WORDS:
        words.pop()
    if not words or len("_".join(words)) < 3:
        return None
    return "_".join(words)


WRITTEN_BEFORE = re.compile(rf"(?<![\w.,:<=>/*+-])({_NUM}(?:\s*{_OPERATOR}\s*{_NUM})+)\s*=\s*\$?\s*$")


def _with_written_arithmetic(expression, before):
    """An annotation that holds only its result (``12 - 4 = <<8=8>>8``) takes the arithmetic the text wrote."""
    if not isinstance(ast.parse(expression, mode="eval").body, ast.Constant):
        return expression
    written = WRITTEN_BEFORE.search(before)
    if written is None or _continues_expression(before[:written.start()]):
        return expression  # none, or only the tail of a longer expression ('the bikes + 12 - 18 =')
    try:
        return to_python(written.group(1).replace("$", "").replace("−", "-"))
    except ConversionError:
        return expression


def parse_rationale(text):
    """A GSM8K answer -> `Rationale` with one `Step` per annotation (python expression, result, name)."""
    lines, answer = split_rationale(text)
    annotated = [annotate_text_equations(line) for line in lines]
    rationale = Rationale([line for line, _ in annotated], answer)
    used = Counter()
    for index, (line, added) in enumerate(annotated):
        for match in ANNOTATION.finditer(line):
            expression = _with_written_arithmetic(to_python(match.group(1)), line[:match.start()])
            result = parse_number(match.group(2))
            written_result = match.group(2).strip()
            rest = line[match.end():]
            written = WRITTEN_NUMBER.match(rest.lstrip("$"))
            after = rest.lstrip("$")[written.end():] if written else rest
            name = name_from_text(after.lstrip("%").lstrip())
            if name is not None:
                if name in RESERVED:
                    name += "_value"
                used[name] += 1
                if used[name] > 1:
                    name = f"{name}_{used[name]}"
            rationale.steps.append(Step(expression, result, name, index, written_result, match.start() in added))
    return rationale


def written_result_mismatches(text):
    """Annotations whose result differs from the number written right after them (the CoT shows the latter)."""
    bad = []
    for match in ANNOTATION.finditer(text):
        rest = text[match.end():].lstrip("$")
        written = WRITTEN_NUMBER.match(rest)
        if written and not _close(parse_number(written.group()), parse_number(match.group(2))):
            bad.append(match.group(0))
    return bad


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)


def agrees(value, written):
    """An executed value agrees with a written result when equal, or equal after rounding to the written
    precision (10/3 and '3.33')."""
    target = parse_number(written)
    decimals = len(written.partition(".")[2]) if "." in written else 0
    return _close(value, target) or (decimals > 0 and _close(round(value, decimals), target))


def question_values(question):
    """The numbers written in a question, as floats (commas dropped): literals a solution must keep."""
    return {float(n.replace(",", "")) for n in QUESTION_NUMBER.findall(question)}


# ---------------------------------------------------------------- stage 1: chain of thought

def gsm8k_cot(rationale_text):
    """The rationale without annotations, its last line a `\\boxed{}` answer."""
    lines, answer = split_rationale(rationale_text)
    return "\n".join(strip_annotations(line) for line in lines) + f"\nThe answer is \\boxed{{{answer}}}."


def math_cot(solution):
    if extract_boxed(solution) is None:
        raise ConversionError("no_final_answer", "the MATH solution has no \\boxed{}")
    return solution.strip()


# ---------------------------------------------------------------- stage 2: code-nested

def plan_text(line):
    """A rationale line saying what it computes, not the result: ``sold 48/2 = <<48/2=24>>24 clips`` ->
    ``sold 48/2 clips``. An annotation with no ``=`` written before it shows its expression instead; unit
    words repeated right after the cut result (``3 hats + 16 hats = 19 hats``) are said once."""
    pieces, position = [], 0
    for match in ANNOTATION.finditer(line):
        before = line[position:match.start()]
        cut = re.search(r"=\s*\$?\s*$", before)
        before, insert = (before[:cut.start()].rstrip(), "") if cut else (before, to_python(match.group(1)))
        pieces += [before, insert]
        position = match.end()
        written = re.match(r"\$?(?:-?\d[\d,]*(?:\.\d+)?|-?\.\d+)%?", line[position:])
        if written:
            position += written.end()
            if cut:
                position += _repeated_words(before, line[position:])
    pieces.append(line[position:])
    text = re.sub(r"[ \t]+", " ", "".join(pieces))
    return re.sub(r" +([.,;:!?])", r"\1", text).strip()


def _repeated_words(before, after, most=4):
    """Length of the start of `after` that repeats the last words of `before` (0 if none)."""
    tail = before.lower().split()
    for count in range(most, 0, -1):
        match = re.match(r"\s*" + r"\s+".join(r"(\S+)" for _ in range(count)), after)
        if match and len(tail) >= count and [w.lower() for w in match.groups()] == tail[-count:]:
            return match.end()
    return 0


def _substitute(expression, earlier, protected):
    """Literals equal to an earlier step's value become that step's name (most recent one), unless the
    number is also one of the question's own numbers (then it most likely is that number)."""
    tree = ast.parse(expression, mode="eval")

    class Names(ast.NodeTransformer):
        def visit_Constant(self, node):
            if isinstance(node.value, (int, float)) and not any(_close(node.value, p) for p in protected):
                for name, value in reversed(earlier):
                    if _close(node.value, value):
                        return ast.Name(id=name, ctx=ast.Load())
            return node

    return ast.unparse(Names().visit(tree))


@dataclass
class CodeSolution:
    """A code-nested solution before execution: text pieces and code blocks, and what each must print."""
    parts: list  # ("text", str) | ("code", str)
    expected: list  # per code block: (written result, from text?) of each step its (check) output must show
    check_codes: list  # code whose output is compared with `expected` (empty: the shown blocks themselves)
    answer: str
    final_value: float | None = None  # one block per solution: what its single print must show
    solve_for: float | None = None  # FOBAR: the masked number the solver must return


def code_solution(rationale_text, question, blocks="step"):
    """Plan a code-nested solution for a GSM8K rationale (executed later, all solutions in one batch)."""
    if blocks not in BLOCK_MODES:
        raise ValueError(f"parameter 'reference_blocks' is '{blocks}', not one of {BLOCK_MODES}")
    rationale = parse_rationale(rationale_text)
    if not rationale.steps:
        raise ConversionError("no_annotations")
    answer_value = parse_number(rationale.answer)
    final = next((s for s in reversed(rationale.steps) if _close(s.result, answer_value)), None)
    if final is None:
        raise ConversionError("answer_not_computed", f"no annotated step computes {rationale.answer}")
    boxed = f"The answer is \\boxed{{{rationale.answer}}}."
    if blocks == "step":
        return _per_step(rationale, boxed)
    return _per_solution(rationale, question, final, boxed)


def _per_step(rationale, boxed):
    """Each annotated line: its plan text, then a fresh block assigning and printing each of its steps."""
    parts, expected, pending = [], [], []
    for index, line in enumerate(rationale.lines):
        steps = [s for s in rationale.steps if s.line == index]
        if not steps:
            pending.append(strip_annotations(line))
            continue
        pending.append(plan_text(line))
        parts.append(("text", "\n".join(pending)))
        pending = []
        code = []
        for step in steps:
            if step.name:
                code += [f"{step.name} = {step.expression}", f"print({step.name})"]
            else:
                code.append(f"print({step.expression})")
        parts.append(("code", "\n".join(code)))
        expected.append([(s.written, s.from_text) for s in steps])
    parts.append(("text", "\n".join(pending + [boxed])))
    return CodeSolution(parts, expected, [], rationale.answer)


def _per_solution(rationale, question, final, boxed):
    """One block for the whole solution (later steps use earlier names), printing the final quantity."""
    protected = question_values(question)
    earlier, code, names = [], [], []
    for number, step in enumerate(rationale.steps, 1):
        name = step.name or f"step_{number}"
        code.append(f"{name} = {_substitute(step.expression, earlier, protected)}")
        earlier.append((name, step.result))
        names.append(name)
    final_name = names[rationale.steps.index(final)]
    shown = "\n".join(code + [f"print({final_name})"])
    check = "\n".join(code + [f"print({name})" for name in names])
    text = "\n".join(plan_text(line) for line in rationale.lines)
    parts = [("text", text), ("code", shown), ("text", boxed)]
    # A hidden check run prints every step (compared with the annotations); the shown block's own output
    # is compared with the final value.
    return CodeSolution(parts, [[(s.written, s.from_text) for s in rationale.steps]], [check], rationale.answer,
                        final_value=final.result)


# ---------------------------------------------------------------- FOBAR: solve the seed's computation for X

def fobar_solution(rationale_text, seed_question, masked_value, seed_answer):
    """Code that rebuilds the seed's computation with the masked number as a sympy symbol X and solves
    ``final == answer`` for X. Returns a `CodeSolution` whose single block must print ``[masked_value]``."""
    rationale = parse_rationale(rationale_text)
    if not rationale.steps:
        raise ConversionError("no_annotations")
    masked = parse_number(str(masked_value))
    answer_value = parse_number(str(seed_answer))
    occurrences = [n for n in QUESTION_NUMBER.findall(seed_question) if _close(parse_number(n), masked)]
    if len(occurrences) > 1:  # which of them the rationale's literal stands for cannot be told
        raise ConversionError("fobar_ambiguous", f"{masked_value} appears {len(occurrences)} times in the question")
    final = next((s for s in reversed(rationale.steps) if _close(s.result, answer_value)), None)
    if final is None:
        raise ConversionError("answer_not_computed", f"no annotated step computes {seed_answer}")
    # The masked number becomes X; other question numbers stay literals; earlier results become names.
    protected = question_values(seed_question) - {masked}
    # '80%' of the question is '.8' in the rationale
    percent = re.search(rf"(?<![\d.]){re.escape(str(masked_value))}\s*(?:%|percent)", seed_question) is not None
    earlier, code, uses_x = [], [], False
    for number, step in enumerate(rationale.steps, 1):
        name = step.name or f"step_{number}"
        expression = _substitute(step.expression, earlier, protected | {masked})
        tree = ast.parse(expression, mode="eval")

        class MaskX(ast.NodeTransformer):
            def visit_Constant(self, node):
                if isinstance(node.value, (int, float)) and _close(node.value, masked):
                    return ast.Name(id="X", ctx=ast.Load())
                if percent and isinstance(node.value, (int, float)) and _close(node.value, masked / 100):
                    return ast.BinOp(ast.Name(id="X", ctx=ast.Load()), ast.Div(), ast.Constant(100))
                return node

        masked_expression = ast.unparse(MaskX().visit(tree))
        uses_x |= masked_expression != expression
        code.append(f"{name} = {masked_expression}")
        earlier.append((name, step.result))
        if step is final:
            final_name = name
            break
    if not uses_x:
        raise ConversionError("masked_number_unused", f"{masked_value} is in no step before the answer")
    answer_literal = _literal(answer_value)
    source = "\n".join(["from sympy import Eq, nsimplify, solve, symbols", "", "X = symbols('X')"] + code +
                       [f"print(solve(Eq(nsimplify({final_name}), {answer_literal}), X))"])
    text = (f"The unknown X is one of the numbers of the question. I redo the question's computation with X "
            f"as a symbol, step by step, and solve for the X that makes the result equal to {answer_literal}.")
    parts = [("text", text), ("code", source), ("text", f"The value of X is \\boxed{{{masked_value}}}.")]
    return CodeSolution(parts, [], [], str(masked_value), solve_for=masked)


def _literal(value):
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# ---------------------------------------------------------------- execution and rows

def _check_output(solution, check_outputs, shown_outputs):
    """None when every executed value agrees with the annotations, else the reason."""
    if solution.solve_for is not None:
        numbers = re.findall(r"-?\d+(?:\.\d+)?(?:/\d+)?", shown_outputs[0])
        values = [_fraction(n) for n in numbers]
        if shown_outputs[0].startswith("[") and len(values) == 1 and _close(values[0], solution.solve_for):
            return None
        return "fobar_unsolved"
    for expected, output in zip(solution.expected, check_outputs):
        lines = output.strip().splitlines()
        if len(lines) != len(expected):
            return "execution_error"
        for line, (written, from_text) in zip(lines, expected):
            try:
                if not agrees(float(line), written):
                    return "disagreement_text" if from_text else "disagreement"
            except ValueError:
                return "execution_error"
    if solution.final_value is not None:
        try:
            if not _close(float(shown_outputs[0].strip()), solution.final_value):
                return "disagreement"
        except ValueError:
            return "execution_error"
    return None


def _fraction(text):
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator or 1)


def execute_solutions(solutions, executor, max_output_chars=2000):
    """Run every block of every planned solution in one sandbox batch -> (texts, executions, reasons).

    A solution's text is None when its check failed; `reasons[i]` then says why.
    """
    jobs = []  # (solution index, kind, code)
    for index, solution in enumerate(solutions):
        if solution is None:
            continue
        codes = [body for kind, body in solution.parts if kind == "code"]
        jobs += [(index, "shown", code) for code in codes]
        if solution.final_value is not None:  # per-solution blocks: a separate check run
            jobs += [(index, "check", code) for code in solution.check_codes]
    results = executor.execute_many([code for _, _, code in jobs]) if jobs else []
    shown = {i: [] for i in range(len(solutions))}
    checks = {i: [] for i in range(len(solutions))}
    for (index, kind, code), result in zip(jobs, results):
        (shown if kind == "shown" else checks)[index].append((code, result))
    texts, executions, reasons = [], [], []
    for index, solution in enumerate(solutions):
        if solution is None:
            texts.append(None), executions.append([]), reasons.append(None)
            continue
        runs = shown[index]
        outputs = [result.as_output(max_output_chars) for _, result in runs]
        failed = any(not result.ok for _, result in runs + checks[index])
        check_outputs = [r.stdout for _, r in checks[index]] if checks[index] else [r.stdout for _, r in runs]
        reason = "execution_error" if failed else _check_output(solution, check_outputs, outputs)
        runs_log = [{"code": code, "output": output, "error": result.error, "timed_out": result.timed_out,
                     "seconds": result.seconds} for (code, result), output in zip(runs, outputs)]
        executions.append(runs_log)
        reasons.append(reason)
        texts.append(None if reason else render(solution.parts, outputs))
    return texts, executions, reasons


def render(parts, outputs):
    """Text and code pieces with each block's real output, in the tool loop's exact format."""
    pieces, outputs = [], iter(outputs)
    for kind, body in parts:
        if kind == "text":
            pieces.append(body.strip() + "\n" if body.strip() else "")
        else:
            pieces.append(f"```python\n{body}\n```\n" + format_output(next(outputs)))
    return "".join(pieces).strip()


# ---------------------------------------------------------------- questions -> rows

def rationale_of(record):
    """(kind, text) of a registry record's own worked solution: ('gsm8k', rationale) or ('math', solution)."""
    meta = record.get("meta") or {}
    if "####" in str(meta.get("answer", "")):
        return "gsm8k", meta["answer"]
    if meta.get("solution") and extract_boxed(meta["solution"]) is not None:
        return "math", meta["solution"]
    return None, None


def plan(question, seed, stage, blocks):
    """What the reference solution of `question` (a seed, or an augmented question of `seed`) will be:
    ('text', solution) for a CoT, ('code', CodeSolution) for a code-nested one; ConversionError if none."""
    method = question.get("method", "seed")
    kind, text = rationale_of(seed) if seed is not None else (None, None)
    if kind is None:
        raise ConversionError("no_rationale", "the seed has no reference solution")
    if method in ("seed", "rephrase"):  # a rephrasing keeps its seed's numbers and answer
        if stage == "cot":
            return "text", gsm8k_cot(text) if kind == "gsm8k" else math_cot(text)
        if kind != "gsm8k":
            raise ConversionError("no_code_for_math", "MATH solutions have no annotated steps to run")
        return "code", code_solution(text, seed["question"], blocks)
    if method == "fobar" and stage == "tir" and kind == "gsm8k":
        masked = (question.get("meta") or {}).get("masked_value", question.get("answer"))
        return "code", fobar_solution(text, seed["question"], masked, seed["answer"])
    raise ConversionError(f"no_reference_{method}", f"no reference {stage} solution for '{method}' questions")


def reference_solutions(questions, seeds, executor, stage, blocks="step", prompt_dir=None,
                        max_output_chars=2000, chunk_size=512, progress=True):
    """Reference solutions of `stage` for `questions` -> (rows, raw, counts).

    `seeds` maps a seed id to its registry record (for augmented questions). Rows have the fields of
    `synthesize.synthesize`'s, with `teacher: "reference"`. `counts`: questions, converted, and why
    the others got none.
    """
    from tqdm.auto import tqdm

    rows, raw, dropped = [], [], Counter()
    chunks = range(0, len(questions), chunk_size)
    for start in tqdm(chunks, desc=f"reference {stage}", disable=not progress or len(chunks) < 2):
        chunk = questions[start:start + chunk_size]
        plans = []
        for question in chunk:
            seed = question if question.get("method", "seed") == "seed" else seeds.get(question.get("seed_id"))
            try:
                plans.append(plan(question, seed, stage, blocks))
            except ConversionError as error:
                dropped[error.reason] += 1
                plans.append(None)
        code_plans = [p[1] if p and p[0] == "code" else None for p in plans]
        texts, executions, reasons = execute_solutions(code_plans, executor, max_output_chars)
        for question, planned, text, runs, reason in zip(chunk, plans, texts, executions, reasons):
            if planned is None:
                continue
            if reason:
                dropped[reason] += 1
                continue
            solution = planned[1] if planned[0] == "text" else text
            rows.append(_row(question, stage, solution, runs, prompt_dir))
            raw.append({"id": rows[-1]["id"], "prompt": "", "generation": solution, "executions": runs,
                        "rounds": rows[-1]["rounds"], "finish": rows[-1]["finish"], "prompt_tokens": 0,
                        "completion_tokens": 0})
    counts = {"questions": len(questions), "converted": len(rows), "dropped": dict(sorted(dropped.items()))}
    return rows, raw, counts


def _row(question, stage, solution, executions, prompt_dir):
    """One row in exactly the teacher's row format (synthesize.synthesize)."""
    pred = extract_answer(solution)
    reference = question.get("answer")
    return {
        "id": f"{question['id']}/{stage}/{TEACHER}", "question_id": question["id"], "stage": stage,
        "sample": 0, "question": question["question"], "answer": reference, "pred": pred,
        "boxed": extract_boxed(solution) is not None,
        "correct": None if reference is None else is_equivalent(pred, reference,
                                                                (question.get("meta") or {}).get("choices")),
        "messages": [{"role": "user", "content": user_message(question["question"], stage, prompt_dir)},
                     {"role": "assistant", "content": solution}],
        "teacher": TEACHER, "source": question.get("source"),
        "seed_id": question.get("seed_id", question["id"]), "method": question.get("method", "seed"),
        # As the tool loop counts them: one round per execution plus the closing one; a complete
        # solution ends like a teacher's that stopped at its end of turn.
        "rounds": len(executions) + 1 if stage == "tir" else 1, "finish": "eos",
        "executions": len(executions), "execution_errors": 0, "timeouts": 0, "errors_fixed": 0,
        "prefix_cot": has_prefix_cot(solution) if stage == "tir" else None,
        "prompt_tokens": 0, "completion_tokens": 0,
    }


def find_seeds(questions, seeds=(), data_dir=None, inputs=None):
    """Seed id -> registry record, for every augmented question's seed: from `seeds` where loaded, else
    from the seed's benchmark split (its id is ``<benchmark>/<split>/<key>``)."""
    from .data import load_benchmark

    found = {seed["id"]: seed for seed in seeds}
    missing = {q["seed_id"] for q in questions if q.get("seed_id") and q["seed_id"] not in found}
    for name, split in sorted({tuple(seed_id.split("/")[:2]) for seed_id in missing}):
        for record in load_benchmark(name, split, data_dir, inputs=inputs):
            if record["id"] in missing:
                found[record["id"]] = record
    return found
