"""Check that moving text out of a README lost nothing: every paragraph, list item, table row and code line
of an older README must appear, word for word, in the current README.md or a docs/*.md file.

    git show <commit>:README.md > /tmp/old-readme.md
    python scripts/readme_coverage.py /tmp/old-readme.md

Link targets and heading levels are ignored (moving a section changes both). A unit that is not found is
printed with the closest text that is, and its similarity, so a deliberate rewording can be told from a
loss; the exit code is the number of units not found word for word (0: nothing lost or reworded).
"""
import difflib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def normalize(text):
    text = re.sub(r"\]\([^)\s]*\)", "]", text)       # [label](target) -> [label]
    text = re.sub(r"^\s*#+\s+", "", text, flags=re.M)  # heading levels
    return " ".join(text.split())


def units(markdown):
    """Paragraphs; list items and table rows one by one; code blocks line by line."""
    found, block, fence = [], [], None

    def flush():
        if block:
            found.append("\n".join(block))
            block.clear()

    for line in markdown.splitlines():
        opener = re.match(r"\s*(`{3,})(.*)$", line)
        if fence:
            if opener and len(opener.group(1)) >= fence and not opener.group(2).strip():
                fence = None
            elif line.strip():
                found.append(line)
            continue
        if opener and "`" not in opener.group(2):
            flush()
            fence = len(opener.group(1))
        elif not line.strip():
            flush()
        elif line.lstrip().startswith("|") or re.match(r"\s*(- |\d+\. )", line) or line.startswith("#"):
            flush()
            block.append(line)
            if line.lstrip().startswith("|") or line.startswith("#"):
                flush()
        else:
            block.append(line)
    flush()
    return [unit for unit in (normalize(u) for u in units_filter(found)) if unit]


def units_filter(found):
    return [u for u in found if not re.fullmatch(r"\s*\|?[-|: ]+\|?\s*", u)]  # table separator rows


def main(old_path):
    new_files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    corpus = " ".join(normalize(path.read_text()) for path in new_files)
    candidates = [normalize(u) for path in new_files for u in units(path.read_text())]
    missing = [unit for unit in units(Path(old_path).read_text()) if unit not in corpus]
    for unit in missing:
        best = max(candidates, key=lambda c: difflib.SequenceMatcher(None, unit, c).ratio())
        ratio = difflib.SequenceMatcher(None, unit, best).ratio()
        print(f"--- not found word for word ({ratio:.0%} like the closest):\n  old: {unit[:300]}\n  new: {best[:300]}")
    total = len(units(Path(old_path).read_text()))
    print(f"{total - len(missing)} of {total} units found word for word; {len(missing)} not")
    return len(missing)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
