"""The tool-integrated loop: generate, stop at the output marker, execute, append, continue.

One mechanism for evaluation (step 6) and for synthesizing code-nested data (step 2). Each trajectory is
a small state machine (generate -> stopped at the marker -> execute in the sandbox -> generate again ...)
driven by events, many in flight at once: a trajectory's next request goes to the backend the moment its
code has run, its code goes to the sandbox the moment its generation stops, and a finished trajectory is
handed to `on_finish` at once. There is no round or batch barrier, so the model works while code runs
and the sandbox works while the model generates.

State across code blocks: by default each block runs in a fresh interpreter (ToRA / MuMath-Code
convention: the training data re-defines what it uses, and fresh state makes every execution
reproducible on its own). With ``carry_state=True`` the trajectory's earlier blocks are re-run silently
before the new one, so variables carry over the way they would in a notebook.
"""
import os
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

OUTPUT_MARKER = "```output"
CODE_BLOCK = re.compile(r"```python\s*\n(.*?)```", re.DOTALL)


@dataclass
class Trajectory:
    prompt: str
    generation: str = ""
    executions: list = field(default_factory=list)
    rounds: int = 0
    finish: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self):
        return asdict(self)


def code_blocks(text):
    return [block for block in CODE_BLOCK.findall(text)]


def last_code_block(text):
    """The last closed ```python block, if it comes after the last output (i.e. is not yet executed)."""
    tail = text[text.rfind(OUTPUT_MARKER) + len(OUTPUT_MARKER):] if OUTPUT_MARKER in text else text
    blocks = code_blocks(tail)
    return blocks[-1] if blocks else None


def format_output(output):
    return f"{OUTPUT_MARKER}\n{output}\n```\n"


def errors_fixed(executions):
    """Failed executions that a later execution of the same trajectory got past."""
    fixed = 0
    for position, execution in enumerate(executions):
        failed = execution["error"] or execution["timed_out"]
        if failed and any(not (later["error"] or later["timed_out"]) for later in executions[position + 1:]):
            fixed += 1
    return fixed


def has_prefix_cot(generation, min_words=8):
    """Whether the solution reasons in words before its first code block."""
    head = generation.split("```python", 1)[0]
    return "```python" in generation and len(head.split()) >= min_words


def run_tool_loop(backend, prompts, executor, sampling, max_rounds=4, execute=True, carry_state=False,
                  max_output_chars=2000, on_finish=None, exec_workers=None, max_in_flight=None, progress=False,
                  seed_offsets=None):
    """Run every prompt to completion; returns one `Trajectory` per prompt, in order.

    `executor` is a sandbox pool (`execute(code, prelude)`), called from `exec_workers` threads (default:
    the machine's cores) while generation goes on. `on_finish(index, trajectory)` is called (on this
    thread) the moment a trajectory is done, e.g. to write it out. `max_in_flight` bounds the trajectories
    started and not yet finished (default: all). execute=False gives plain chain-of-thought generation
    through the same path (one step, no stop string).

    Semantics per trajectory: a step that stops at the output marker after a closed python block gets
    that block executed and its real output appended (the model's own text after the marker is never
    kept); after `max_rounds` executions the next stop ends it with finish ``max_rounds``.

    `seed_offsets` (one int per prompt, added to `sampling.seed`) names each trajectory's sampling seed;
    default: its position in `prompts`. Callers that resume pass offsets derived from what a trajectory is
    (problem and sample), so an interrupted run draws the same samples as an uninterrupted one.
    """
    from .backends import submitter

    engine = submitter(backend)
    trajectories = [Trajectory(prompt=prompt) for prompt in prompts]
    stop = [OUTPUT_MARKER] if execute else []
    events = queue.Queue()  # (kind, index, payload) from the backend's and the sandbox's threads
    sample_index = _sample_indices(prompts)
    offsets = list(range(len(prompts))) if seed_offsets is None else [int(offset) for offset in seed_offsets]
    if len(offsets) != len(prompts):
        raise ValueError(f"seed_offsets has {len(offsets)} entries for {len(prompts)} prompts")
    bar = tqdm(total=len(prompts), desc="trajectories", disable=not progress, leave=False)

    def generate(index):
        trajectory = trajectories[index]
        engine.submit(trajectory.prompt + trajectory.generation, sampling, stop,
                      lambda result: events.put(("generated", index, result)), index=offsets[index],
                      sample_index=sample_index[index])

    waiting = iter(range(len(prompts)))
    limit = len(prompts) if max_in_flight is None else max(1, int(max_in_flight))
    running = 0
    with ThreadPoolExecutor(exec_workers or os.cpu_count() or 1, thread_name_prefix="mumath-exec") as runner:
        for index in waiting:
            generate(index)
            running += 1
            if running >= limit:
                break
        while running:
            kind, index, payload = events.get()
            if isinstance(payload, BaseException):
                raise payload
            trajectory = trajectories[index]
            if kind == "generated":
                code = _take_completion(trajectory, payload, max_rounds)
                if code is not None:
                    prelude = code_blocks(trajectory.generation)[:-1] if carry_state else ()
                    runner.submit(_run_code, executor, code, prelude, index, events)
                    continue
                running -= 1
                bar.update()
                if on_finish is not None:
                    on_finish(index, trajectory)
                for following in waiting:
                    generate(following)
                    running += 1
                    break
            else:  # executed
                code, result = payload
                output = result.as_output(max_output_chars)
                trajectory.generation += format_output(output)
                trajectory.executions.append({"code": code, "output": output, "error": result.error,
                                              "timed_out": result.timed_out, "seconds": result.seconds})
                generate(index)
    bar.close()
    return trajectories


def _take_completion(trajectory, completion, max_rounds):
    """Append one generation step; the code to run next, or None when the trajectory is done."""
    trajectory.generation += completion.text
    trajectory.rounds += 1
    trajectory.prompt_tokens += completion.prompt_tokens
    trajectory.completion_tokens += completion.completion_tokens
    code = last_code_block(trajectory.generation) if completion.finish == "stop" else None
    if code is not None and trajectory.rounds <= max_rounds:
        return code
    trajectory.finish = _finish_reason(completion.finish, code)
    return None


def _run_code(executor, code, prelude, index, events):
    try:
        events.put(("executed", index, (code, executor.execute(code, prelude))))
    except BaseException as error:  # raised on the loop's thread
        events.put(("executed", index, error))


def _sample_indices(prompts):
    """For each prompt, how many identical prompts come before it (k samples of one question differ)."""
    seen, indices = {}, []
    for prompt in prompts:
        text = prompt.cache_text() if hasattr(prompt, "cache_text") else prompt
        indices.append(seen.get(text, 0))
        seen[text] = indices[-1] + 1
    return indices


def _finish_reason(finish, code):
    if finish != "stop":
        return finish  # eos or length
    if code is None:
        return "no_code"  # wrote the output marker without a python block before it
    return "max_rounds"


def reference_tool_loop(backend, prompts, executor, sampling, max_rounds=4, execute=True, carry_state=False,
                        max_output_chars=2000):
    """The same semantics done the naive way: per round, one `generate_batch` over every unfinished
    trajectory, then the round's code blocks one after another.

    The baseline of `benchmarks/evaluate.py` and the reference the tests hold `run_tool_loop` to
    (same outputs under greedy decoding). `backend` is a `TransformersBackend`.
    """
    trajectories = [Trajectory(prompt=prompt) for prompt in prompts]
    stop = [OUTPUT_MARKER] if execute else []
    active = list(range(len(prompts)))
    while active:
        completions = backend.generate_batch([trajectories[i].prompt + trajectories[i].generation for i in active],
                                             sampling, stop)
        still = []
        for index, completion in zip(active, completions):
            trajectory = trajectories[index]
            code = _take_completion(trajectory, completion, max_rounds)
            if code is None:
                continue
            prelude = code_blocks(trajectory.generation)[:-1] if carry_state else ()
            result = executor.execute(code, prelude)
            output = result.as_output(max_output_chars)
            trajectory.generation += format_output(output)
            trajectory.executions.append({"code": code, "output": output, "error": result.error,
                                          "timed_out": result.timed_out, "seconds": result.seconds})
            still.append(index)
        active = still
    return trajectories
