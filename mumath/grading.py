"""Pull the final answer out of a solution and decide whether it matches the reference.

Extraction order: the last top-level ``\\boxed{}`` (or ``\\fbox{}``; a box inside a box belongs to the
outer one), "The answer is ...", an "Answer: ..." label, the last ``**bold**`` that is not a label, the
last number. A final ``\\boxed{`` that never closes (generation cut off) is no answer: the later rules
look only at the text before it. Equivalence: multiple choice (letter, ``(C)``, option text or option
value, against a gold letter or option text), then numbers (tolerance, fractions, percentages,
thousands separators, trailing units), then normalized strings, then math-verify for symbolic answers.
No SIGALRM anywhere, so grading is safe in threads and notebooks.
"""
import logging
import math
import re

# math-verify warns on every call that we switched its SIGALRM timeouts off; we did so on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)

NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
ANSWER_LABEL = re.compile(r"(?im)^[\s>#*_-]*(?:final\s+)?answer\s*(?:\*\*|__)?\s*[:\uff1a]\s*(?:\*\*|__)?(.+)$")


def boxed_spans(text):
    """(command start, content start, content end) of each top-level box, in order; content end is None
    for a box that never closes (always the last one: nothing after it can be read as a box)."""
    spans, resume = [], 0
    for match in BOX_OPEN.finditer(text):
        if match.start() < resume:
            continue  # a box inside the previous box is part of its content
        depth, index = 1, match.end()
        while index < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        if depth:
            spans.append((match.start(), match.end(), None))
            break
        spans.append((match.start(), match.end(), index - 1))
        resume = index
    return spans


def extract_boxed(text):
    """Content of the last top-level \\boxed{...} or \\fbox{...}, braces balanced; None if there is none
    or the last one never closes."""
    spans = boxed_spans(text)
    if not spans:
        match = list(re.finditer(r"\\boxed ([^\s$]+)", text))  # \boxed 5
        return match[-1].group(1) if match else None
    _, start, end = spans[-1]
    return None if end is None else text[start:end].strip()


def _clean_stated(answer):
    return answer.strip().strip("*_ $").rstrip(".").strip("*_ $")


def extract_answer(text):
    """The model's final answer as a string, or None."""
    if not text:
        return None
    spans = boxed_spans(text)
    if spans and spans[-1][2] is None:
        text = text[:spans[-1][0]]  # cut off inside its box: no boxed answer, the rest decides
    else:
        boxed = extract_boxed(text)
        if boxed is not None:
            return boxed
    stated = re.findall(r"[Tt]he (?:final )?answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.?$|\n)", text)
    if stated:
        return stated[-1].strip()
    labelled = [_clean_stated(answer) for answer in ANSWER_LABEL.findall(text)]
    labelled = [answer for answer in labelled if answer]
    if labelled:
        return labelled[-1]
    bold = [part.strip() for part in re.findall(r"\*\*([^*]+)\*\*", text) if not part.strip().endswith(":")]
    if bold:
        return bold[-1]
    numbers = re.findall(NUMBER, text)
    return numbers[-1] if numbers else None


def _strip_text_wrappers(answer):
    answer = re.sub(r"\\text(?:bf|rm|it)?\{([^{}]*)\}", r" \1 ", answer)
    answer = re.sub(r"\\mbox\{([^{}]*)\}", r" \1 ", answer)
    return answer


def normalize(answer):
    """Cheap textual normalization shared by the numeric and string comparisons."""
    answer = str(answer).strip()
    answer = _strip_text_wrappers(answer)
    for old, new in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", " "), ("\\$", ""), ("$", ""),
                     ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                     ("^\\circ", ""), ("^{\\circ}", ""), ("\\degree", ""), ("°", ""), ("\\displaystyle", "")):
        answer = answer.replace(old, new)
    answer = re.sub(r"^[a-zA-Z]\s*=\s*", "", answer.strip())  # "x = 5" -> "5"
    answer = answer.strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", answer)


def _percent(answer):
    return bool(re.search(r"(\\%|%|percent)\s*$", answer))


def to_number(answer):
    """A float for answers that are numbers (with units, commas, %, fractions); else None."""
    text = normalize(answer)
    text = re.sub(r"\s*(\\%|%|percent)$", "", text)
    text = re.sub(r"^(?:rs\.?|usd|\\pounds|£|€)\s*", "", text, flags=re.I)
    # Trailing units ("12 apples", "5 cm^2", "3km/h"), but not a lone variable ("2x").
    unit = re.match(rf"^({NUMBER})(?:\s+[a-zA-Z]|[a-zA-Z]{{2,}})[a-zA-Z\s^{{}}\d/.]*$", text)
    if unit:
        text = unit.group(1)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    fraction = re.fullmatch(r"(-?)\\frac\{?(-?\d+(?:\.\d+)?)\}?\{?(-?\d+(?:\.\d+)?)\}?", text)
    if fraction:
        sign, numerator, denominator = fraction.groups()
        return _divide(float(numerator), float(denominator), sign)
    slash = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)", text)
    if slash:
        return _divide(float(slash.group(1)), float(slash.group(2)), "")
    mixed = re.fullmatch(r"(-?\d+)\s*\\frac\{(\d+)\}\{(\d+)\}", text)
    if mixed:
        whole, numerator, denominator = (int(group) for group in mixed.groups())
        value = abs(whole) + _divide(numerator, denominator, "")
        return -value if whole < 0 else value
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _divide(numerator, denominator, sign):
    if denominator == 0:
        return None
    value = numerator / denominator
    return -value if sign else value


def numbers_match(pred, gold, rel_tol=1e-4, abs_tol=1e-6):
    return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


OPTION_LABEL = re.compile(r"(?:^|(?<=[\s,;]))\(?([A-Ja-j])\s*[).:]\s*")


def _label_cuts(matches, first):
    """The matches that label options `first`, `first`+1, ... in order (upper- or lowercase, not mixed)."""
    cuts = []
    for match in matches:
        if match.group(1) == chr(ord(first) + len(cuts)):
            cuts.append(match)
    return cuts


def split_options(value):
    """Multiple-choice options as a list of their texts: a list stays a list (a leading "A) " or "a) " on
    every entry is dropped); one string ``"A) 3 B) 5 C) 10"`` (or ``(A) 3 (B) 5``, ``A. 3, B. 5``, MathQA's
    ``a ) 12 , b ) 16``) is split at its consecutive letters."""
    if isinstance(value, (list, tuple)):
        options = [str(option).strip() for option in value]
        labels = [OPTION_LABEL.match(option) for option in options]
        for first in "Aa":
            if options and all(label and label.group(1) == chr(ord(first) + index)
                               for index, label in enumerate(labels)):
                return [option[label.end():].strip() for option, label in zip(options, labels)]
        return options
    text = str(value)
    matches = list(OPTION_LABEL.finditer(text))
    cuts = max((_label_cuts(matches, first) for first in "Aa"), key=len)
    if len(cuts) < 2:
        return [text.strip()]
    ends = [match.start() for match in cuts[1:]] + [len(text)]
    return [text[match.end():end].strip().rstrip(",;").strip() for match, end in zip(cuts, ends)]


def option_letter(index):
    """0 -> 'A': the gold of a benchmark that gives the correct option's position (MMLU's `answer: 2`)."""
    if isinstance(index, bool) or not isinstance(index, int) and not str(index).strip().isdigit():
        raise ValueError(f"expected the correct option's 0-based index, got {index!r}")
    if not 0 <= int(index) < 10:
        raise ValueError(f"option index {index} is out of range 0-9")
    return chr(65 + int(index))


def format_options(choices):
    """Options as the model should read them: ``A) 3  B) 5  C) 10``."""
    return "  ".join(f"{chr(65 + index)}) {choice}" for index, choice in enumerate(choices))


def choice_index(answer, choices):
    """Which option an answer names: by its text, its letter (``C``, ``(C)``, ``C) 10``), or its value."""
    text = normalize(answer).lower()
    lowered = [normalize(choice).lower() for choice in choices]
    if text in lowered:
        return lowered.index(text)
    letter = re.fullmatch(r"\(?([a-j])\)?(?:[.:)]\s*.*)?", text) or re.fullmatch(r"(?:option|choice)\s+\(?([a-j])\)?", text)
    if letter and ord(letter.group(1)) - ord("a") < len(choices):
        return ord(letter.group(1)) - ord("a")
    value = to_number(answer)
    if value is not None:
        for index, choice in enumerate(choices):
            if to_number(choice) is not None and numbers_match(value, to_number(choice)):
                return index
    return None


def map_choice(pred, choices):
    """Map a prediction onto the text of one of the choices (unchanged when it names none)."""
    index = choice_index(pred, choices)
    return pred if index is None else choices[index]


def math_verify_equal(pred, gold):
    """Symbolic equivalence through math-verify, with its signal-based timeouts switched off."""
    try:
        from math_verify import parse, verify

        gold_parsed = parse(f"${gold}$", parsing_timeout=None)
        pred_parsed = parse(f"${pred}$", parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:
        return False


def is_equivalent(pred, gold, choices=None):
    """Whether the predicted answer string matches the reference answer string (never for a missing gold:
    see `is_graded`)."""
    if pred is None or gold is None or str(pred).strip() == "":
        return False
    pred, gold = str(pred), str(gold)
    if choices:
        choices = split_options(choices)
        pred_index, gold_index = choice_index(pred, choices), choice_index(gold, choices)
        if pred_index is not None and gold_index is not None:
            return pred_index == gold_index
        if gold_index is not None:
            gold = choices[gold_index]  # a gold letter means its option's text
    pred_value, gold_value = to_number(pred), to_number(gold)
    if pred_value is not None and gold_value is not None:
        if numbers_match(pred_value, gold_value):
            return True
        if _percent(pred) or _percent(gold):  # 25% == 0.25 (either side may carry the sign)
            return any(numbers_match(pred_value * scale, gold_value) for scale in (100, 0.01))
        return False
    if normalize(pred).lower() == normalize(gold).lower():
        return True
    if choices:
        return False
    return math_verify_equal(normalize(pred), normalize(gold))


def is_graded(gold):
    """Whether an item has a gold answer to grade against; items without one are `ungraded`."""
    return gold is not None and str(gold).strip() != ""


def grade(generation, gold, choices=None):
    """(extracted answer, verdict) for a full model generation."""
    answer = extract_answer(generation)
    return answer, is_equivalent(answer, gold, choices)
