"""Where a decode step of the engine spends its time: growing-by-concatenation KV (`DynamicLayer`) vs the
engine's preallocated buffer (`mumath.engine.BufferedLayer`), fp32 and bf16, at the shape of the TIR
benchmark (64 rows, ~1,000-column KV: a 2-shot TIR prompt plus its generation).

    python benchmarks/decode_profile.py [--rows 32] [--columns 1000] [--steps 8]

One process, arms interleaved step by step (round-robin), so machine load hits every arm alike: the ratios
are what this measures on a shared machine, not the absolute times. For the buffered arm it also writes
torch.profiler's top operators (self CPU time) of the measured steps. Writes
benchmarks/results/decode-profile-cpu.json.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from transformers import DynamicCache  # noqa: E402

from mumath.engine import buffered_cache  # noqa: E402
from mumath.models import load_model  # noqa: E402


def prefilled(model, rows, columns, buffered):
    """A cache holding `columns` columns of random KV per row (a decode step's cost does not depend on the
    values; a real prefill of rows x columns tokens would cost minutes here), the same for every arm."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    shape = (rows, config.num_key_value_heads, columns, config.hidden_size // config.num_attention_heads)
    cache = buffered_cache(config) if buffered else DynamicCache(config=config)
    for layer in cache.layers:
        layer.update(torch.randn(shape, generator=generator).to(model.dtype),
                     torch.randn(shape, generator=generator).to(model.dtype))
    return {"cache": cache, "token": torch.randint(100, 20000, (rows,), generator=generator), "position": columns,
            "mask": torch.ones((rows, columns), dtype=torch.long)}


def step(model, state):
    state["mask"] = torch.cat([state["mask"], state["mask"].new_ones((state["mask"].shape[0], 1))], dim=1)
    positions = torch.full((state["mask"].shape[0], 1), state["position"])
    with torch.inference_mode():
        out = model(input_ids=state["token"][:, None], attention_mask=state["mask"], position_ids=positions,
                    past_key_values=state["cache"], use_cache=True)
    state["token"], state["position"] = out.logits[:, -1].argmax(-1), state["position"] + 1
    return state


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--columns", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode-profile-cpu.json"))
    args = parser.parse_args()
    models = {dtype: load_model("embedded", device="cpu", dtype=dtype)[0] for dtype in ("float32", "bfloat16")}
    arms = {f"{kv}-{dtype}": (models[dtype], kv == "buffered") for dtype in models for kv in ("concat", "buffered")}
    states = {name: prefilled(model, args.rows, args.columns, buffered) for name, (model, buffered) in arms.items()}
    seconds = dict.fromkeys(arms, 0.0)
    for name, (model, _) in arms.items():  # warm-up step, not timed
        step(model, states[name])
    for _ in range(args.steps):
        for name, (model, _) in arms.items():
            started = time.perf_counter()
            step(model, states[name])
            seconds[name] += time.perf_counter() - started
    same = {dtype: bool(torch.equal(states[f"concat-{dtype}"]["token"], states[f"buffered-{dtype}"]["token"]))
            for dtype in models}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(4):
            step(models["float32"], states["buffered-float32"])
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    per_step = {name: round(value / args.steps, 4) for name, value in seconds.items()}
    result = {"rows": args.rows, "kv_columns": args.columns, "steps": args.steps, "torch_threads": torch.get_num_threads(),
              "seconds_per_step": per_step,
              "speedup_buffered_vs_concat": {dtype: round(per_step[f"concat-{dtype}"] / per_step[f"buffered-{dtype}"], 2)
                                             for dtype in models},
              "speedup_buffered_bf16_vs_concat_fp32": round(per_step["concat-float32"] / per_step["buffered-bfloat16"], 2),
              "same_greedy_tokens_concat_vs_buffered": same, "load_average": os.getloadavg(),
              "profile_buffered_fp32_top_ops": table.splitlines(),
              "note": "arms interleaved step by step in one process; the machine was shared (see load_average)"}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table)
    print(json.dumps({k: v for k, v in result.items() if k != "profile_buffered_fp32_top_ops"}, indent=1))


if __name__ == "__main__":
    main()
