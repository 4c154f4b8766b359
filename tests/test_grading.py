"""Table-driven tests for answer extraction and equivalence (both verdicts, tricky cases)."""
import threading

import pytest

from mumath.grading import extract_answer, extract_boxed, is_equivalent, to_number

EQUIVALENCE = [
    # (prediction, gold, choices, expected)
    ("72", "72", None, True),
    ("72.0", "72", None, True),
    ("72.00001", "72", None, True),
    ("73", "72", None, False),
    ("1,000", "1000", None, True),
    ("1,234,567", "1234567", None, True),
    ("1000", "10000", None, False),
    ("\\$18", "18", None, True),
    ("$18$", "18", None, True),
    ("18 dollars", "18", None, True),
    ("18 \\text{ dollars}", "18", None, True),
    ("5 \\text{cm}^2", "5", None, True),
    ("12 apples", "12", None, True),
    ("2x", "2", None, False),
    ("\\frac{1}{2}", "0.5", None, True),
    ("\\dfrac{1}{2}", "\\frac12", None, True),
    ("1/2", "\\frac{1}{2}", None, True),
    ("-\\frac{3}{4}", "-0.75", None, True),
    ("\\frac{3}{4}", "-0.75", None, False),
    ("\\frac{2}{3}", "0.6667", None, True),
    ("\\frac{2}{3}", "0.67", None, False),
    ("25\\%", "25", None, True),
    ("25%", "0.25", None, True),
    ("0.25", "25\\%", None, True),
    ("30\\%", "25", None, False),
    ("x = 5", "5", None, True),
    ("x=5", "6", None, False),
    ("90^\\circ", "90", None, True),
    ("90^{\\circ}", "90", None, True),
    ("3\\sqrt{2}", "\\sqrt{18}", None, True),
    ("2\\sqrt{3}", "\\sqrt{18}", None, False),
    ("\\frac{\\pi}{2}", "\\pi/2", None, True),
    ("\\frac{\\pi}{3}", "\\pi/2", None, False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", None, True),
    ("(3,-1)", "(-1,3)", None, False),
    ("x^2+2x+1", "(x+1)^2", None, True),
    ("x^2+2x+2", "(x+1)^2", None, False),
    ("\\text{(C)}", "\\text{(C)}", None, True),
    ("\\text{Monday}", "Monday", None, True),
    ("Tuesday", "Monday", None, False),
    ("-2", "-2.0", None, True),
    ("-2", "2", None, False),
    ("1\\frac{1}{2}", "1.5", None, True),
    ("0.333333", "\\frac{1}{3}", None, True),
    ("0.3", "\\frac{1}{3}", None, False),
    ("1e3", "1000", None, True),
    ("", "0", None, False),
    (None, "0", None, False),
    ("3.14", "3.1416", None, False),
    ("\\infty", "\\infty", None, True),
    ("[1,2]", "[1,2]", None, True),
    ("yes", "yes", ["yes", "no"], True),
    ("Yes", "yes", ["yes", "no"], True),
    ("no", "yes", ["yes", "no"], False),
    ("B", "$2.50", ["$1.25", "$2.50", "$3.75"], True),
    ("(A)", "$2.50", ["$1.25", "$2.50", "$3.75"], False),
    ("2.5", "$2.50", ["$1.25", "$2.50", "$3.75"], True),
    ("greater", "less", ["greater", "less"], False),
    ("5/8", "5/8", None, True),
    ("10/16", "5/8", None, True),
    ("7/8", "5/8", None, False),
    ("\\boxed{5}", "5", None, True),  # a leftover \boxed wrapper is read through by math-verify
    ("\\boxed{6}", "5", None, False),
    ("4933828", "4933828.0", None, True),
    ("-9867630.0", "-9867630", None, True),
    ("\\frac{9}{4}", "2.25", None, True),
    ("2,25", "2.25", None, False),
    # multiple choice: gold as a letter or as the option's text; options as a list or one string
    ("C", "C", "A) 3 B) 5 C) 10", True),
    ("(C)", "C", "A) 3 B) 5 C) 10", True),
    ("10", "C", "A) 3 B) 5 C) 10", True),
    ("10.0", "C", ["3", "5", "10"], True),
    ("C", "10", ["3", "5", "10"], True),
    ("\\text{(C)}", "10", ["3", "5", "10"], True),
    ("B", "C", "A) 3 B) 5 C) 10", False),
    ("5", "C", ["3", "5", "10"], False),
    ("(A)", "10", "(A) 3 (B) 5 (C) 10", False),
]


@pytest.mark.parametrize("pred,gold,choices,expected", EQUIVALENCE)
def test_equivalence(pred, gold, choices, expected):
    assert is_equivalent(pred, gold, choices) is expected


EXTRACTION = [
    ("so the total is \\boxed{18}.", "18"),
    ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
    ("\\fbox{7}", "7"),
    ("The answer is 42.", "42"),
    ("The final answer is: $3\\pi$", "3\\pi"),
    ("We get **15** apples", "15"),
    ("she paid 3 then 4 then 12", "12"),
    ("no numbers here", None),
    ("", None),
    ("**Answer:** 12", "12"),
    ("Final Answer: $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("**Step 1:** add 3 and 4 to get **7**", "7"),
    ("\\boxed{\\frac{1}{2}", None),  # cut off inside the box: no boxed answer, and nothing before it
    ("The answer is 7. Check: \\boxed{\\frac{1}{2}", "7"),  # unclosed box: the next rule decides
    ("\\boxed{\\frac{\\sqrt{\\boxed{3}}}{2}}", "\\frac{\\sqrt{\\boxed{3}}}{2}"),  # a box in a box: the outer one
]


@pytest.mark.parametrize("text,expected", EXTRACTION)
def test_extraction(text, expected):
    assert extract_answer(text) == expected


def test_unbalanced_boxed_is_none():
    assert extract_boxed("\\boxed{1 + {2}") is None


def test_to_number_rejects_expressions():
    assert to_number("x+1") is None
    assert to_number("1,234") == 1234


def test_grading_works_off_the_main_thread():
    """math-verify's default timeouts use SIGALRM, which fails outside the main thread."""
    results = []
    worker = threading.Thread(target=lambda: results.append(is_equivalent("3\\sqrt{2}", "\\sqrt{18}")))
    worker.start()
    worker.join()
    assert results == [True]


def test_options_string_is_split_at_its_letters():
    from mumath.grading import split_options

    assert split_options("A) 3 B) 5 C) 10") == ["3", "5", "10"]
    assert split_options("(A) 1/2 (B) 3 apples (C) none") == ["1/2", "3 apples", "none"]
    assert split_options("A. 3, B. 5") == ["3", "5"]
    assert split_options(["A) x", "B) y"]) == ["x", "y"] and split_options(["x", "y"]) == ["x", "y"]
    assert split_options("Vitamin B) is not a list") == ["Vitamin B) is not a list"]


def test_table_is_big_enough():
    assert len(EQUIVALENCE) >= 60
    assert sum(1 for row in EQUIVALENCE if row[3]) >= 20 and sum(1 for row in EQUIVALENCE if not row[3]) >= 20
