"""The recipe's steps, one entry point each: ``run_<step>(config)`` with the step's typed configuration.

A notebook builds its configuration from its `parameters` cell (``params.from_notebook``) and calls the
step here; so can a script (``run_evaluate(params.resolve("evaluate", overrides={...}))``). Each function
hands the configuration's values to the library function that does the work.
"""
from pathlib import Path

from .config import resolve_run_dir, step_of


def _sampling(generation, seed):
    from .backends import Sampling

    return Sampling(generation.max_new_tokens, generation.temperature, generation.top_p, seed)


def make_step_teacher(config, run_dir):
    """The teacher of a step's `teacher` group (its responses cached under the run folder)."""
    from .teacher import make_teacher

    t = config.teacher
    teacher = make_teacher(run_dir, backend=t.backend, model=t.model, base_url=t.base_url, api_model=t.api_model,
                           api_key_env=t.api_key_env, tokenizer=t.tokenizer, batch_size=t.batch_size,
                           max_concurrency=t.max_concurrency, max_retries=t.max_retries, cache_path=t.cache_path,
                           price_per_1m_prompt=t.price_per_1m_prompt,
                           price_per_1m_completion=t.price_per_1m_completion, server=t.server)
    print("teacher:", teacher.identity, "| cached responses:", len(teacher.cache))
    return teacher


def run_augment(config):
    """Step 1: seeds -> <run_dir>/augment/ (questions, rejected, stats)."""
    from .augment import run_augment as augment

    run_dir = resolve_run_dir(config.run_dir)
    teacher = make_step_teacher(config, run_dir)
    return augment(run_dir, teacher, seed_benchmarks=config.seeds.benchmarks,
                   seeds_per_benchmark=config.seeds.per_benchmark, methods=config.methods,
                   sampling=_sampling(config.generation, config.seed), data_dir=config.data_dir, seed=config.seed,
                   prompt_dir=config.prompt_dir)


def sandbox_pool(sandbox):
    """The sandbox of a step's `sandbox` group (workers None: one per core)."""
    import os

    from .executor import SandboxPool

    return SandboxPool(workers=sandbox.workers or os.cpu_count() or 1, timeout=sandbox.timeout,
                       memory_mb=sandbox.memory_mb)


def run_synthesize(config):
    """Step 2: questions -> <run_dir>/synthesize/ (CoT and code-nested solutions, stats)."""
    from .synthesize import run_synthesize as synthesize

    run_dir = resolve_run_dir(config.run_dir)
    print("solution source:", config.solution_source)
    teacher = None if config.solution_source in ("reference", "corpus") else make_step_teacher(config, run_dir)
    with sandbox_pool(config.sandbox) as executor:
        return synthesize(run_dir, teacher, executor, questions_file=config.questions_file,
                          include_seeds=config.include_seeds, seed_benchmarks=config.seeds.benchmarks,
                          seeds_per_benchmark=config.seeds.per_benchmark, data_dir=config.data_dir,
                          seed=config.seed, stages=config.stages, sampling=_sampling(config.generation, config.seed),
                          max_rounds=config.max_rounds, few_shot=config.few_shot, prompt_dir=config.prompt_dir,
                          solution_source=config.solution_source, reference_blocks=config.reference_blocks,
                          corpora=config.corpora, extra_corpora=config.extra_corpora,
                          corpus_limit=config.corpus_limit, corpus_reexecute=config.corpus_reexecute,
                          corpus_carry_state=config.corpus_carry_state)


def run_filter(config):
    """Step 3: <run_dir>/synthesize/ -> <run_dir>/filter/ (the training sets, funnel, contamination)."""
    from .filter import FilterConfig
    from .filter import run_filter as filter_run
    from .params import FilterSettings

    run_dir = resolve_run_dir(config.run_dir)
    knobs = FilterConfig(**{name: getattr(config, name) for name in FilterSettings.model_fields})
    return filter_run(run_dir, synth_dir=config.synth_dir, data_dir=config.data_dir,
                      extra_benchmarks=config.extra_benchmarks,
                      decontaminate_benchmarks=config.decontaminate_benchmarks,
                      tokenizer=config.training_tokenizer, config=knobs, push_to_hub=config.hub.push,
                      hub_repo_id=config.hub.repo_id, hub_private=config.hub.private)


def run_stage(config):
    """Steps 4 and 5 (and their variants): one SFT stage -> <run_dir>/<step_name>/final (+ stats, log).
    Which stage it is comes from `step_name` ('stage1', 'stage2', 'stage2.only', ...)."""
    from .sft import run_stage as train_stage

    run_dir = resolve_run_dir(config.run_dir)
    return train_stage(run_dir, step_of(config.step_name), data=config.data, init_model=config.init_model,
                       step_name=config.step_name, mode=config.mode, seed=config.seed, prompt_dir=config.prompt_dir,
                       prompt_format=config.prompt_format, push_to_hub=config.hub.push,
                       hub_repo_id=config.hub.repo_id, hub_private=config.hub.private,
                       **config.training.model_dump())


def plot_training_log(stage_dir):
    """Loss and learning rate per step from <stage_dir>/log.jsonl -> <stage_dir>/loss.png (the stage's own
    folder: a variant never draws over another stage's plot). Returns the figure (None without a log)."""
    import matplotlib.pyplot as plt

    from .records import read_jsonl

    log_path = Path(stage_dir) / "log.jsonl"
    rows = [row for row in read_jsonl(log_path) if "loss" in row] if log_path.exists() else []
    if not rows:
        print(f"no training log in {log_path}")
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
    steps = [row["step"] for row in rows]
    left.plot(steps, [row["loss"] for row in rows])
    left.set_title("training loss")
    right.plot(steps, [row.get("learning_rate") for row in rows])
    right.set_title("learning rate")
    for axes in (left, right):
        axes.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(Path(stage_dir) / "loss.png", dpi=120)
    return figure


def run_evaluate(config, progress=True):
    """Step 6 (and its variants): every benchmark x mode -> <run_dir>/<step_name>/ (trajectories, metrics)."""
    from .evaluate import run_evaluation

    run_dir = resolve_run_dir(config.run_dir)
    e, g, sandbox = config.evaluation, config.evaluation.generation, config.sandbox
    return run_evaluation(
        run_dir, step_name=config.step_name or "evaluate", model=config.model, backend=config.backend,
        base_url=config.base_url, api_model=config.api_model, api_key_env=config.api_key_env,
        tokenizer=config.tokenizer, data_dir=config.data_dir, benchmarks=e.benchmarks, split=e.split,
        extra_benchmarks=config.extra_benchmarks, limit=e.limit, modes=e.modes, few_shot=e.few_shot,
        max_new_tokens=g.max_new_tokens, max_rounds=e.max_rounds, batch_size=e.batch_size,
        max_concurrency=e.max_concurrency, n_samples=e.n_samples, temperature=g.temperature, top_p=g.top_p,
        seed=config.seed, carry_state=e.carry_state, exec_workers=sandbox.workers, exec_timeout=sandbox.timeout,
        exec_memory_mb=sandbox.memory_mb, prompt_dir=config.prompt_dir, chunk_size=e.chunk_size, progress=progress,
        prompt_format=config.prompt_format, context_length=config.context_length, server=config.server)


def run_analysis(config):
    """Step 7: figures and report.md from run outputs -> <run_dir>/analysis/ (or `out_dir`)."""
    from .analysis import run_analysis as analyse

    return analyse(resolve_run_dir(config.run_dir), runs=config.runs, out_dir=config.out_dir,
                   failing_examples=config.failing_examples, browser_limit=config.browser_limit)


RUNNERS = {"augment": run_augment, "synthesize": run_synthesize, "filter": run_filter, "stage1": run_stage,
           "stage2": run_stage, "evaluate": run_evaluate, "analysis": run_analysis}
