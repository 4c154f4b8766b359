"""The tool-integrated loop: stop at the marker, execute for real, append, continue; event-driven."""
import threading

import pytest

from mumath.backends import Completion, Sampling, TransformersBackend, complete_with_submit, cut_at_stop
from mumath.executor import SandboxPool
from mumath.prompts import build_messages, read_fewshot
from mumath.tir import OUTPUT_MARKER, code_blocks, last_code_block, run_tool_loop


class ScriptedBackend:
    """Plays back fixed turns per prompt (a stand-in model; the HTTP path has its own real-server tests)."""

    def __init__(self, scripts):
        self.scripts, self.calls = scripts, []

    def format_prompt(self, messages):
        return messages[-1]["content"]

    def complete(self, prompts, sampling, stop=(), on_result=None):
        self.calls.append(len(prompts))
        out = []
        for prompt in prompts:
            script = next(s for key, s in self.scripts.items() if prompt.startswith(key))
            text, finish = script.pop(0)
            text, stopped = cut_at_stop(text, stop)
            out.append(Completion(text, "stop" if stopped else finish, 10, 5))
            if on_result is not None:
                on_result(len(out) - 1, out[-1])
        return out


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout=3) as sandbox:
        yield sandbox


def test_executes_appends_and_continues(pool):
    backend = ScriptedBackend({
        "A": [("Compute.\n```python\nprint(6 * 7)\n```\n```output\nFAKE", "stop"), ("So \\boxed{42}.", "eos")],
        "B": [("Direct: \\boxed{1}", "eos")],
    })
    a, b = run_tool_loop(backend, ["A", "B"], pool, Sampling(), max_rounds=3)
    assert a.generation == "Compute.\n```python\nprint(6 * 7)\n```\n```output\n42\n```\nSo \\boxed{42}."
    assert "FAKE" not in a.generation, "the model's own guess of the output is discarded"
    assert a.rounds == 2 and a.finish == "eos" and a.executions[0]["output"] == "42"
    assert b.rounds == 1 and b.executions == []


class GatedBackend:
    """Answers each prompt's turns from a script; a turn may wait for an event first (no timing involved)."""

    def __init__(self, scripts, gates=None):
        self.scripts, self.gates = scripts, gates or {}

    def format_prompt(self, messages):
        return messages[-1]["content"]

    def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
        key = next(k for k in self.scripts if prompt.startswith(k))
        text, finish = self.scripts[key].pop(0)
        gate = self.gates.get(key)

        def answer():
            if gate is not None and not gate.wait(timeout=20):
                callback(TimeoutError(f"{key}: the event it waited for never came (a barrier in the loop?)"))
                return
            cut, stopped = cut_at_stop(text, stop)
            callback(Completion(cut, "stop" if stopped else finish, 1, 1))

        threading.Thread(target=answer, daemon=True).start()

    def complete(self, prompts, sampling, stop=(), on_result=None):
        return complete_with_submit(self, prompts, sampling, stop, on_result)


class SignallingPool:
    """The sandbox, plus an event set when a given code starts running."""

    def __init__(self, pool, code, event):
        self.pool, self.code, self.event = pool, code, event

    def execute(self, code, prelude=()):
        if code.strip() == self.code:
            self.event.set()
        return self.pool.execute(code, prelude)


def test_a_finished_trajectory_is_reported_while_others_run(pool):
    """B is written out before A's generation even ends: no barrier between trajectories."""
    b_reported = threading.Event()
    backend = GatedBackend({"A": [("\\boxed{1}", "eos")], "B": [("\\boxed{2}", "eos")]}, gates={"A": b_reported})
    finished = []

    def on_finish(index, trajectory):
        finished.append(index)
        if index == 1:
            b_reported.set()

    a, b = run_tool_loop(backend, ["A", "B"], pool, Sampling(), on_finish=on_finish)
    assert finished == [1, 0] and a.generation == "\\boxed{1}" and b.generation == "\\boxed{2}"


def test_executions_overlap_generation(pool):
    """A's code runs while B is still generating: B's step waits until A's execution has started, which a
    round barrier (all generation, then all execution) would never allow."""
    a_executing = threading.Event()
    backend = GatedBackend({
        "A": [("```python\nprint(6 * 7)\n```\n", "stop"), ("\\boxed{42}", "eos")],
        "B": [("\\boxed{2}", "eos")],
    }, gates={"B": a_executing})
    a, b = run_tool_loop(backend, ["A", "B"], SignallingPool(pool, "print(6 * 7)", a_executing), Sampling())
    assert a.executions[0]["output"] == "42" and a.finish == "eos" and b.generation == "\\boxed{2}"


def test_max_in_flight_bounds_started_trajectories(pool):
    started, peak = set(), []
    lock = threading.Lock()

    class Counting(GatedBackend):
        def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
            with lock:
                started.add(prompt[0])
                peak.append(len(started) - len(done))
            super().submit(prompt, sampling, stop, callback, index, sample_index)

    done = set()
    backend = Counting({key: [("\\boxed{0}", "eos")] for key in "ABCDE"})
    run_tool_loop(backend, list("ABCDE"), pool, Sampling(), max_in_flight=2,
                  on_finish=lambda index, t: done.add(index))
    assert len(started) == 5 and max(peak) <= 2


def test_backend_errors_reach_the_caller(pool):
    class Failing(GatedBackend):
        def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
            callback(RuntimeError("server said no"))

    with pytest.raises(RuntimeError, match="server said no"):
        run_tool_loop(Failing({}), ["A"], pool, Sampling())


def test_errors_are_fed_back(pool):
    backend = ScriptedBackend({"P": [("```python\nprint(1/0)\n```\n", "stop"), ("fixed \\boxed{0}", "eos")]})
    [t] = run_tool_loop(backend, ["P"], pool, Sampling())
    assert "```output\nZeroDivisionError: division by zero\n```" in t.generation


def test_max_rounds_bounds_execution(pool):
    turn = ("```python\nprint(1)\n```\n", "stop")
    backend = ScriptedBackend({"P": [turn, turn, turn]})
    [t] = run_tool_loop(backend, ["P"], pool, Sampling(), max_rounds=2)
    assert len(t.executions) == 2 and t.rounds == 3 and t.finish == "max_rounds"


def test_marker_without_code_ends(pool):
    [t] = run_tool_loop(ScriptedBackend({"P": [("no code ```output", "stop")]}), ["P"], pool, Sampling())
    assert t.finish == "no_code" and t.executions == []


def test_cot_mode_never_executes(pool):
    backend = ScriptedBackend({"P": [("```python\nprint(1)\n```\n```output\n1\n```\n\\boxed{1}", "eos")]})
    [t] = run_tool_loop(backend, ["P"], pool, Sampling(), execute=False)
    assert t.executions == [] and t.generation.endswith("\\boxed{1}")


def test_carry_state(pool):
    turns = [("```python\nx = 41\n```\n", "stop"), ("```python\nprint(x + 1)\n```\n", "stop"), ("\\boxed{42}", "eos")]
    [fresh] = run_tool_loop(ScriptedBackend({"P": list(turns)}), ["P"], pool, Sampling())
    [carried] = run_tool_loop(ScriptedBackend({"P": list(turns)}), ["P"], pool, Sampling(), carry_state=True)
    assert "NameError" in fresh.executions[1]["output"] and carried.executions[1]["output"] == "42"


def test_last_code_block_ignores_executed_blocks():
    text = "```python\na\n```\n```output\n1\n```\n"
    assert last_code_block(text) is None
    assert last_code_block(text + "```python\nb\n```\n") == "b\n"
    assert code_blocks(text + "```python\nb\n```\n") == ["a\n", "b\n"]


def test_fewshot_outputs_are_real(pool):
    """Few-shot TIR examples show outputs; each must be what its code really prints."""
    for example in read_fewshot("tir"):
        blocks = code_blocks(example["solution"])
        shown = [part.split("\n```")[0] for part in example["solution"].split(OUTPUT_MARKER + "\n")[1:]]
        assert [pool.execute(code).as_output() for code in blocks] == shown


def test_real_model_round_trip(embedded, pool):
    """The embedded model through the same loop: every output in the text is the sandbox's real output."""
    model, tokenizer = embedded
    questions = ["What is 12 * 7?", "Tom has 3 apples and buys 5 more. How many apples does he have?"]
    backend = TransformersBackend(model, tokenizer, batch_size=2, progress=False)
    prompts = [backend.format_prompt(build_messages(q, "tir", few_shot=2)) for q in questions]
    trajectories = run_tool_loop(backend, prompts, pool, Sampling(max_new_tokens=96), max_rounds=2)
    assert sum(len(t.executions) for t in trajectories) >= 1, "greedy, this prompt makes the model write code"
    for t in trajectories:
        assert t.completion_tokens > 0 and t.finish in ("eos", "length", "max_rounds", "no_code")
        assert t.rounds == len(t.executions) + 1 if t.finish in ("eos", "length") else t.rounds == 3
        for execution in t.executions:
            assert f"```output\n{execution['output']}\n```" in t.generation
            assert pool.execute(execution["code"]).as_output() == execution["output"]


def test_run_coroutine_inside_a_running_event_loop():
    """Jupyter runs cells inside an event loop: the OpenAI backends must still work there."""
    import asyncio

    from mumath.backends import run_coroutine

    async def answer():
        await asyncio.sleep(0)
        return 42

    async def fail():
        raise ValueError("from the coroutine")

    async def cell():
        assert asyncio.get_running_loop()
        with pytest.raises(ValueError, match="from the coroutine"):
            run_coroutine(fail())
        return run_coroutine(answer())

    assert asyncio.run(cell()) == 42 and run_coroutine(answer()) == 42
