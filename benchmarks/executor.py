"""Sandbox executor throughput vs a fresh `python -c` per snippet: same snippets, 2 at a time.

    python benchmarks/executor.py [--snippets 500] [--workers 2] [--chunk 50]

Writes benchmarks/results/executor.json. The snippets mimic model-written solutions: half plain
arithmetic, half sympy (which a fresh interpreter must import every time; the pool's workers import it
once and fork). A third arm is the sandbox without its file isolation (`isolate_files=False`: no private
root, no snippet identity; the sandbox as it was before issue 20), so the cost of that layer is a ratio
measured in the same process. The arms alternate in chunks of `--chunk` snippets, so that load from other
jobs on a shared machine falls on all alike; the load average is recorded.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mumath.executor import SAFE_ENV, SandboxPool  # noqa: E402

PLAIN = "price = {i} * 3\ndiscount = price * 0.25\nprint(price - discount)"
SYMPY = "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(2*x + {i} - 17, x))"


def snippets(count):
    return [(SYMPY if i % 2 else PLAIN).format(i=i) for i in range(count)]


def fresh_interpreter(code, timeout=10):
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=timeout,
                            env=dict(SAFE_ENV))
    return result.stdout.strip()


def timed_start(workers, isolate_files):
    """Seconds to start a pool (workers pre-importing sympy and friends) and close it."""
    started = time.perf_counter()
    with SandboxPool(workers=workers, timeout=10, isolate_files=isolate_files):
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--snippets", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "executor.json"))
    args = parser.parse_args()
    codes = snippets(args.snippets)

    load_before = os.getloadavg()
    with SandboxPool(workers=args.workers, timeout=10) as pool, \
            SandboxPool(workers=args.workers, timeout=10, isolate_files=False) as before, \
            ThreadPoolExecutor(args.workers) as threads:
        startup_now_s = timed_start(args.workers, True)
        startup_before_s = timed_start(args.workers, False)
        baseline_out, pool_out, before_out = [], [], []
        baseline_s = pool_run_s = before_run_s = 0.0
        for first in range(0, len(codes), args.chunk):
            chunk = codes[first:first + args.chunk]
            arm_started = time.perf_counter()
            baseline_out += threads.map(fresh_interpreter, chunk)
            baseline_s += time.perf_counter() - arm_started
            arm_started = time.perf_counter()
            pool_out += [r.stdout.strip() for r in pool.execute_many(chunk)]
            pool_run_s += time.perf_counter() - arm_started
            arm_started = time.perf_counter()
            before_out += [r.stdout.strip() for r in before.execute_many(chunk)]
            before_run_s += time.perf_counter() - arm_started
        layers = {"namespaces": pool.namespaces, "memory_limit": pool.memory_limit,
                  "landlock_abi": pool.landlock_abi, "private_root_and_identity": pool.namespaces,
                  "disk_mb": pool.disk_mb}
    pool_s = startup_now_s + pool_run_s

    assert pool_out == baseline_out == before_out, "the sandbox must print what a plain interpreter prints"
    result = {
        "snippets": len(codes), "workers": args.workers, "cpus": os.cpu_count(), "machine": platform.machine(),
        "fresh_python_s": round(baseline_s, 2), "fresh_python_per_s": round(len(codes) / baseline_s, 1),
        "sandbox_total_s": round(pool_s, 2), "sandbox_startup_s": round(startup_now_s, 2),
        "sandbox_per_s": round(len(codes) / pool_s, 1),
        "speedup_including_startup": round(baseline_s / pool_s, 1),
        "speedup_steady_state": round(baseline_s / pool_run_s, 1),
        "without_file_isolation": {"run_s": round(before_run_s, 2), "startup_s": round(startup_before_s, 2),
                                   "per_s_steady": round(len(codes) / before_run_s, 1)},
        "file_isolation_cost_ratio_steady": round(pool_run_s / before_run_s, 3),
        "file_isolation_startup_ratio": round(startup_now_s / startup_before_s, 2),
        "sandbox_layers": layers, "chunk": args.chunk,
        "load_average_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
