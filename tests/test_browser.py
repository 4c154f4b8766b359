"""The trajectory browser: records from a run's files, rounds and code blocks, escaping of hostile model text,
the JupyterLab widget's filters, the analysis step's page, and the page in a real headless Chromium."""
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from mumath.analysis import collect
from mumath.browser import (browser_widget, collect_records, render_page, render_trajectory, segments,
                            write_page)
from mumath.evaluate import trajectory_row
from mumath.tir import Trajectory, format_output

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">&amp; </pre></details>'


def records_of(run_dir, limit=None):
    return collect_records(collect([run_dir]), limit)


def execution(code, output, error=None, timed_out=False):
    return {"code": code, "output": output, "error": error, "timed_out": timed_out}


def tir_generation(*rounds, ending):
    """Prose + code + the interpreter's output per round, then the final text (the tool loop's layout)."""
    text = ""
    for prose, code, output in rounds:
        text += f"{prose}\n```python\n{code}\n```\n" + format_output(output)
    return text + ending


def write_evaluation(run_dir, model, benchmark, mode, trajectories):
    """metrics.json + trajectories.jsonl + config.json as the evaluate step writes them (rows from its own
    `trajectory_row`)."""
    folder = Path(run_dir) / ("evaluate.base" if model == "embedded" else "evaluate") / benchmark / mode
    folder.mkdir(parents=True)
    rows = []
    for index, (question, answer, trajectory) in enumerate(trajectories):
        record = {"id": f"{benchmark}-{index}", "question": question, "answer": answer, "meta": {}}
        rows.append(dict(trajectory_row(record, 0, trajectory, mode, benchmark), fingerprint="f1"))
    (folder / "trajectories.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    correct = sum(row["correct"] for row in rows)
    (folder / "metrics.json").write_text(json.dumps({"benchmark": benchmark, "mode": mode, "n": len(rows),
                                                     "correct": correct, "accuracy": correct / len(rows),
                                                     "fingerprint": "f1", "model": model}))
    (folder / "config.json").write_text(json.dumps({"fingerprint": "f1", "settings": {"model": model}}))
    return rows


@pytest.fixture
def run_dir(tmp_path):
    """A run with a base and a trained model's evaluations (TIR and CoT) and a synthesis stage."""
    run = tmp_path / "run"
    two_rounds = Trajectory(prompt="p", generation=tir_generation(
        ("Let x be the apples.", "x = 3 +", "SyntaxError: invalid syntax"),
        ("Fix the syntax.", "x = 3 + 4\nprint(x)", "7"), ending="So the answer is \\boxed{7}."),
        executions=[execution("x = 3 +", "SyntaxError: invalid syntax", error="SyntaxError: invalid syntax"),
                    execution("x = 3 + 4\nprint(x)", "7")], rounds=3, finish="eos")
    timeout = Trajectory(prompt="p", generation=tir_generation(
        ("Loop forever.", "while True: pass", "TimeoutError: execution timed out"), ending="\\boxed{5}"),
        executions=[execution("while True: pass", "TimeoutError: execution timed out", timed_out=True)],
        rounds=2, finish="eos")
    hostile = Trajectory(prompt="p", generation=HOSTILE + " The answer is \\boxed{9}.", rounds=1, finish="eos")
    write_evaluation(run, "outputs/run/stage2/final", "gsm8k", "tir",
                     [("Tom has 3 apples and gets 4 more. How many?", "7", two_rounds),
                      ("How long does the loop run?", "3", timeout)])
    write_evaluation(run, "outputs/run/stage2/final", "svamp", "cot",
                     [(f"A hostile question {HOSTILE}", "9", hostile)])
    write_evaluation(run, "embedded", "gsm8k", "tir",
                     [("Tom has 3 apples and gets 4 more. How many?", "7",
                       Trajectory(prompt="p", generation="I do not know.", rounds=1, finish="length"))])
    synth = run / "synthesize"
    synth.mkdir()
    generation = tir_generation(("Add them.", "print(2 + 3)", "5"), ending="So \\boxed{5}.")
    (synth / "tir.jsonl").write_text(json.dumps(
        {"id": "gsm8k/train/1/tir/0", "question": "What is 2 + 3?", "answer": "5", "pred": "5", "correct": True,
         "stage": "tir", "rounds": 2, "finish": "eos", "teacher": "embedded", "source": "gsm8k:train",
         "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": generation}]}) + "\n")
    (synth / "tir_trajectories.jsonl").write_text(json.dumps(
        {"id": "gsm8k/train/1/tir/0", "prompt": "p", "generation": generation,
         "executions": [execution("print(2 + 3)", "5")], "rounds": 2, "finish": "eos"}) + "\n")
    return run


def test_records_carry_outcome_tags_roles_and_sources(run_dir):
    records = {(r["model"], r["benchmark"], r["mode"], r["id"]): r for r in records_of(run_dir)}
    assert len(records) == 5
    fixed = records[("stage-2", "gsm8k", "tir", "gsm8k-0")]
    assert fixed["tags"] == ["correct", "error"] and fixed["rounds"] == 3 and fixed["source"] == "evaluate"
    assert records[("stage-2", "gsm8k", "tir", "gsm8k-1")]["tags"] == ["wrong", "timeout"]
    assert records[("base", "gsm8k", "tir", "gsm8k-0")]["tags"] == ["wrong", "no answer"]
    synthesized = records[("teacher", "gsm8k", "tir", "gsm8k/train/1/tir/0")]
    assert synthesized["source"] == "synthesize" and synthesized["executions"][0]["output"] == "5"
    assert len(records_of(run_dir, limit=1)) == 4  # one per (source, model, benchmark, mode) group


def test_generation_is_cut_into_rounds_with_each_code_block_paired_with_its_execution(run_dir):
    fixed = next(r for r in records_of(run_dir) if r["id"] == "gsm8k-0" and r["model"] == "stage-2")
    rounds = segments(fixed["generation"], fixed["executions"])
    assert [[kind for kind, _, _ in pieces] for pieces in rounds] == [["text", "code", "output"],
                                                                       ["text", "code", "output"], ["text"]]
    assert rounds[0][1][2]["error"] and not rounds[1][1][2]["error"] and rounds[1][2][1].strip() == "7"
    body = render_trajectory(fixed)
    assert body.count('class="round"') == 3 and body.count('<span class="tag error">error</span>') == 1
    assert '<code class="pred">7</code>' in body and '<code class="gold">7</code>' in body


def test_hostile_model_text_is_escaped_everywhere(run_dir):
    page = render_page(records_of(run_dir))
    assert "<script>window.__pwned" not in page and "<img" not in page and "</pre></details>&" not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own script only
    assert "Content-Security-Policy" in page and "http://" not in page and "https://" not in page


def test_widget_filters_and_shows_the_chosen_trajectory(run_dir):
    box = browser_widget(records_of(run_dir))
    assert box.count.value == "5 of 5 trajectories"
    box.dropdowns["outcome"].value = "timeout"
    assert box.count.value == "1 of 5 trajectories"
    box.dropdowns["outcome"].value = ""
    box.dropdowns["benchmark"].value = "svamp"
    assert len(box.chooser.options) == 1
    box.chooser.value = box.chooser.options[0][1]
    assert "&lt;script&gt;" in box.shown.value and "<script>window" not in box.shown.value
    box.dropdowns["benchmark"].value = ""
    box.dropdowns["rounds"].value = "3"
    box.chooser.value = box.chooser.options[0][1]
    assert len(box.chooser.options) == 1 and "Fix the syntax." in box.shown.value
    box.search.value = "no such words"
    assert box.count.value == "0 of 5 trajectories" and box.shown.value == ""


def test_analysis_writes_the_page_beside_the_report_and_links_it(run_dir):
    from mumath.analysis import run_analysis

    result = run_analysis(run_dir, record=False)
    page = Path(result["out_dir"]) / "browser.html"
    assert Path(result["report"]).parent == page.parent and result["browser"]["trajectories"] == 5
    assert "[browser.html](browser.html)" in Path(result["report"]).read_text()
    assert "Tom has 3 apples" in page.read_text()
    assert "browser" not in run_analysis(run_dir, record=False, browser_limit=0)


# ------------------------------------------------------------------------------------------ headless Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


class Chromium:
    """Debian's Chromium, headless, driven over the DevTools protocol (websocket-client)."""

    def __init__(self, profile):
        self.process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = Path(profile) / "DevToolsActivePort", time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        import websocket

        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url):
        self.call("Page.navigate", url=url)
        deadline = time.time() + 30
        while self.evaluate("document.readyState") != "complete":
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not load")
            time.sleep(0.1)

    def click(self, selector):
        """A real mouse click at the element's centre (not a script's .click())."""
        box = self.evaluate(f"(function(){{var r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path):
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        if getattr(self, "socket", None):
            self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_static_page_in_headless_chromium_loads_filters_and_shows_a_trajectory(run_dir, tmp_path):
    page = write_page(collect([run_dir]), tmp_path / "analysis" / "browser.html")["path"]
    browser = Chromium(tmp_path / "profile")
    try:
        browser.open(Path(page).as_uri())
        assert browser.evaluate("document.getElementById('count').textContent") == "5 of 5 trajectories"
        browser.evaluate("var s = document.getElementById('f-outcome'); s.value = 'error';"
                         "s.dispatchEvent(new Event('change'))")
        assert browser.evaluate("document.getElementById('count').textContent") == "1 of 5 trajectories"
        visible = "Array.from(document.querySelectorAll('details.traj')).filter(d => !d.hidden)"
        assert browser.evaluate(f"{visible}.map(d => d.dataset.benchmark + '/' + d.dataset.mode)") == ["gsm8k/tir"]
        selector = "details.traj:not([hidden]) summary"
        browser.click(selector)
        assert browser.evaluate("document.querySelector('details.traj:not([hidden])').open") is True
        shown = browser.evaluate("document.querySelector('details.traj:not([hidden])').innerText")
        assert "Tom has 3 apples" in shown and "SyntaxError: invalid syntax" in shown and "x = 3 + 4" in shown
        browser.screenshot(tmp_path / "filtered.png")
        # the hostile trajectory: shown as text, nothing of it runs or loads
        browser.evaluate("var s = document.getElementById('f-outcome'); s.value = ''; s.dispatchEvent(new Event("
                         "'change')); var b = document.getElementById('f-benchmark'); b.value = 'svamp';"
                         "b.dispatchEvent(new Event('change'))")
        browser.click(selector)
        shown = browser.evaluate("document.querySelector('details.traj:not([hidden])').innerText")
        assert "<script>window.__pwned = 1</script><img src=x" in shown
        assert browser.evaluate("typeof window.__pwned") == "undefined"
        assert browser.evaluate("document.querySelectorAll('img, iframe, details details').length") == 0
        browser.screenshot(tmp_path / "hostile.png")
        if os.environ.get("MUMATH_SCREENSHOTS"):  # to look at them: MUMATH_SCREENSHOTS=folder
            for name in ("filtered.png", "hostile.png"):
                shutil.copy(tmp_path / name, Path(os.environ["MUMATH_SCREENSHOTS"]) / name)
        assert (tmp_path / "filtered.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.close()
