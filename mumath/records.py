"""JSONL and JSON files: one policy for reading, one for appending, one atomic writer. Every step uses these.

The policy for a damaged JSONL file: only the *last* line can be torn (a kill mid-append; appends are
flushed line by line), so a last line that does not end in a newline and does not parse is dropped
(`read_jsonl`) and cut off before the next append (`repair_torn_tail`). Any other line that does not parse
is corruption, not a kill: it raises `RecordsError` naming ``file:line`` (1-based), and nothing is dropped
silently.
"""
import gzip
import json
import lzma
import os
from contextlib import contextmanager
from pathlib import Path


class RecordsError(ValueError):
    pass


def open_text(path):
    """A text handle for a plain, .gz or .xz file."""
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def scan_jsonl(path):
    """(rows with their 1-based line numbers, whether the last line was torn). Raises on corruption."""
    path = Path(path)
    if not path.exists():
        return [], False
    with open_text(path) as handle:
        lines = handle.read().split("\n")
    # After the final "\n" split() leaves "", so a complete file's last element is empty.
    tail = lines.pop()
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            rows.append((number, _parse(line, path, number)))
    torn = False
    if tail.strip():
        try:
            rows.append((len(lines) + 1, json.loads(tail)))  # a complete last line without its newline
        except json.JSONDecodeError:
            torn = True
    return rows, torn


def _parse(line, path, number):
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise RecordsError(f"{path}:{number}: not valid JSON ({error.msg}); only a torn last line is "
                           f"tolerated, so this file is damaged: fix or delete that line") from error


def iter_jsonl(path):
    """(1-based line number, row) of a JSONL file, streamed (for files too big to hold); same policy as
    `read_jsonl`: a torn last line is dropped, a bad line anywhere else raises naming ``file:line``."""
    path = Path(path)
    if not path.exists():
        return
    with open_text(path) as handle:
        pending = None  # (number, line): held back until we know whether it is the last line
        for number, line in enumerate(handle, 1):
            if pending is not None and pending[1].strip():
                yield pending[0], _parse(pending[1], path, pending[0])
            pending = (number, line)
    if pending is not None and pending[1].strip():
        number, line = pending
        if line.endswith("\n"):
            yield number, _parse(line, path, number)
        else:
            try:
                yield number, json.loads(line)  # a complete last line without its newline
            except json.JSONDecodeError:
                pass  # torn by a kill mid-append


def read_jsonl(path):
    """Rows of a JSONL file ([] if it does not exist); a torn last line is dropped."""
    return [row for _, row in scan_jsonl(path)[0]]


def jsonl_is_complete(path):
    """Whether every line of the file parses and it ends with a newline (False on corruption)."""
    try:
        _, torn = scan_jsonl(path)
    except RecordsError:
        return False
    path = Path(path)
    if torn:
        return False
    if path.stat().st_size == 0 or path.suffix in (".gz", ".xz"):
        return True
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def repair_torn_tail(path):
    """Cut a torn last line off (and end a complete one with a newline) so appends start on a clean line.

    Returns how many bytes were cut (0 when nothing was torn).
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        with open(path, "r+b") as handle:
            handle.truncate(start)
        return len(data) - start
    with open(path, "ab") as handle:
        handle.write(b"\n")
    return 0


def append_jsonl(path, rows):
    """Append rows, one flushed line each (a kill tears at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()


@contextmanager
def _atomic_handle(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)  # atomic: readers see the old file or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write(path, write):
    with _atomic_handle(path) as handle:
        write(handle)


@contextmanager
def jsonl_writer(path):
    """Stream rows into a JSONL file too big to hold: yields `write(row)`; the file replaces the old one
    atomically when the block ends, and an error inside the block leaves the old file as it was."""
    with _atomic_handle(path) as handle:
        yield lambda row: handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_jsonl(path, rows):
    """Replace a JSONL file atomically."""
    rows = list(rows)
    _atomic_write(path, lambda handle: handle.writelines(json.dumps(row, ensure_ascii=False) + "\n"
                                                         for row in rows))


def write_json(path, data):
    """Replace a JSON file atomically (metrics, summaries, statistics, manifests)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    _atomic_write(path, lambda handle: handle.write(text + "\n"))


def read_json(path, missing_ok=False):
    """A JSON file's content; None for a file that does not exist when `missing_ok` (a step not run).
    A broken file is an error naming it and the line."""
    path = Path(path)
    if missing_ok and not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RecordsError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
