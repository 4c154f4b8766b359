"""Pull the final answer out of a solution and decide whether it matches the reference.

Extraction order: the last ``\\boxed{}`` (or ``\\fbox{}``), "The answer is ...", the last ``**bold**``,
the last number. Equivalence: multiple-choice mapping (TabMWP), then numbers (tolerance, fractions,
percentages, thousands separators, trailing units), then normalized strings, then math-verify for
symbolic answers. No SIGALRM anywhere, so grading is safe in threads and notebooks.
"""
import logging
import math
import re

# math-verify warns on every call that we switched its SIGALRM timeouts off; we did so on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)

NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def extract_boxed(text):
    """Content of the last \\boxed{...} or \\fbox{...}, braces balanced; None if there is none."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        match = list(re.finditer(r"\\boxed ([^\s$]+)", text))  # \boxed 5
        return match[-1].group(1) if match else None
    start, depth = starts[-1], 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index].strip()
    return None


def extract_answer(text):
    """The model's final answer as a string, or None."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    stated = re.findall(r"[Tt]he (?:final )?answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.?$|\n)", text)
    if stated:
        return stated[-1].strip()
    bold = re.findall(r"\*\*([^*]+)\*\*", text)
    if bold:
        return bold[-1].strip()
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


def map_choice(pred, choices):
    """Map a prediction onto one of the choices: by text, by option letter, or by number."""
    text = normalize(pred).lower()
    lowered = [normalize(choice).lower() for choice in choices]
    if text in lowered:
        return choices[lowered.index(text)]
    letter = re.fullmatch(r"\(?([a-e])\)?", text)
    if letter and ord(letter.group(1)) - ord("a") < len(choices):
        return choices[ord(letter.group(1)) - ord("a")]
    value = to_number(pred)
    if value is not None:
        for choice in choices:
            if to_number(choice) is not None and numbers_match(value, to_number(choice)):
                return choice
    return pred


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
    """Whether the predicted answer string matches the reference answer string."""
    if pred is None or gold is None or str(pred).strip() == "":
        return False
    pred, gold = str(pred), str(gold)
    if choices:
        pred = map_choice(pred, choices)
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


def grade(generation, gold, choices=None):
    """(extracted answer, verdict) for a full model generation."""
    answer = extract_answer(generation)
    return answer, is_equivalent(answer, gold, choices)
