"""The tool-integrated loop: generate, stop at the output marker, execute, append, continue.

One mechanism for evaluation (step 6) and for synthesizing code-nested data (step 2). Every unfinished
trajectory advances together: one backend call per round for all of them, then that round's code runs
in parallel in the sandbox pool.

State across code blocks: by default each block runs in a fresh interpreter (ToRA / MuMath-Code
convention: the training data re-defines what it uses, and fresh state makes every execution
reproducible on its own). With ``carry_state=True`` the trajectory's earlier blocks are re-run silently
before the new one, so variables carry over the way they would in a notebook.
"""
import re
from dataclasses import asdict, dataclass, field

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


def run_tool_loop(backend, prompts, executor, sampling, max_rounds=4, execute=True, carry_state=False,
                  max_output_chars=2000, on_round=None):
    """Run every prompt to completion; returns one `Trajectory` per prompt, in order.

    execute=False gives plain chain-of-thought generation through the same path (one round, no stop
    string). `on_round(round, trajectories)` is called after each round (progress, checkpoints).
    """
    trajectories = [Trajectory(prompt=prompt) for prompt in prompts]
    active = list(range(len(prompts)))
    stop = [OUTPUT_MARKER] if execute else []
    for round_index in range(max_rounds + 1):
        if not active:
            break
        completions = backend.complete([trajectories[i].prompt + trajectories[i].generation for i in active],
                                       sampling, stop)
        to_execute = []
        for index, completion in zip(active, completions):
            trajectory = trajectories[index]
            trajectory.generation += completion.text
            trajectory.rounds += 1
            trajectory.prompt_tokens += completion.prompt_tokens
            trajectory.completion_tokens += completion.completion_tokens
            code = last_code_block(trajectory.generation) if completion.finish == "stop" else None
            if code is not None and round_index < max_rounds:
                to_execute.append((index, code))
            else:
                trajectory.finish = _finish_reason(completion.finish, code, round_index, max_rounds)
        preludes = [code_blocks(trajectories[i].generation)[:-1] if carry_state else () for i, _ in to_execute]
        results = executor.execute_many([code for _, code in to_execute], preludes) if to_execute else []
        for (index, code), result in zip(to_execute, results):
            output = result.as_output(max_output_chars)
            trajectories[index].generation += format_output(output)
            trajectories[index].executions.append({"code": code, "output": output, "error": result.error,
                                                   "timed_out": result.timed_out, "seconds": result.seconds})
        active = [index for index, _ in to_execute]
        if on_round is not None:
            on_round(round_index, trajectories)
    return trajectories


def _finish_reason(finish, code, round_index, max_rounds):
    if finish != "stop":
        return finish  # eos or length
    if code is None:
        return "no_code"  # wrote the output marker without a python block before it
    return "max_rounds"
