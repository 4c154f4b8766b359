"""One policy for damaged JSONL files and one atomic JSON writer, used by every step."""
import json
import os
import re
from pathlib import Path

import pytest

from mumath.records import (RecordsError, append_jsonl, jsonl_is_complete, read_jsonl, repair_torn_tail,
                            write_json)

PACKAGE = Path(__file__).resolve().parent.parent / "mumath"


def test_a_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}] and not jsonl_is_complete(path)
    assert repair_torn_tail(path) == len('{"a": ')
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}] and jsonl_is_complete(path)


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    repair_torn_tail(path)
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_a_broken_line_in_the_middle_is_corruption_named_by_file_and_line(tmp_path):
    """Only a kill mid-append can tear a line, and only the last one: anything else is reported, and
    nothing after it is silently dropped."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(RecordsError, match=rf"{path}:2: not valid JSON"):
        read_jsonl(path)
    assert not jsonl_is_complete(path)


def test_the_teacher_cache_follows_the_same_policy(tmp_path):
    from mumath.teacher import ResponseCache

    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "completion": {"text": "x", "finish": "eos"}}\n{"key": "b", "compl')
    cache = ResponseCache(path)
    cache.close()
    assert len(cache) == 1 and path.read_text().endswith("}}\n"), "the torn tail is cut, not glued onto"
    path.write_text('{"key": "a", "completion": {"te\n{"key": "b", "completion": {"text": "y", "finish": "eos"}}\n')
    with pytest.raises(RecordsError, match=":1:"):
        ResponseCache(path)


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"n": 1})

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        write_json(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 1} and list(tmp_path.iterdir()) == [path]


def test_every_module_uses_the_one_reader_and_writer():
    """No second JSONL reader or JSON writer grows back: records.py is the only place that does either."""
    for source in sorted(PACKAGE.glob("*.py")):
        if source.name in ("records.py", "sandbox_worker.py", "executor.py"):
            continue  # the sandbox's control channel is a protocol, not a file
        text = source.read_text()
        assert not re.search(r"write_text\(json\.dumps|json\.dump\(", text), f"{source.name}: use records.write_json"
        assert not re.search(r"for line in .*:\s*\n\s*.*json\.loads\(line\)", text), f"{source.name}: use records.read_jsonl"
        if source.name != "data.py":  # input data files are strict: a bad line anywhere is an error there
            assert "json.loads(line)" not in text, f"{source.name}: use records.read_jsonl / iter_jsonl"
        assert ".tmp\"" not in text and ".tmp')" not in text, f"{source.name}: use records.write_json"


def test_streamed_rows_follow_the_same_policy(tmp_path):
    """iter_jsonl (for files too big to hold) drops a torn last line and names file:line of a bad one."""
    from mumath.records import iter_jsonl, scan_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"n": 1}\n\n{"n": 2}\n{"n": 3')
    assert [(number, row["n"]) for number, row in iter_jsonl(path)] == [(1, 1), (3, 2)]
    assert list(iter_jsonl(path)) == [(n, r) for n, r in scan_jsonl(path)[0]]
    path.write_text('{"n": 1}\n{"n": 2}')  # complete last line without its newline
    assert [row["n"] for _, row in iter_jsonl(path)] == [1, 2]
    path.write_text('{"n": 1}\nnot json\n{"n": 3}\n')
    with pytest.raises(RecordsError, match=r"rows\.jsonl:2"):
        list(iter_jsonl(path))
