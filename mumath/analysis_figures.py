"""Analysis figures: one function per figure of the report, each drawing a collected section
(`analysis.collect`) and saving it as PNG + SVG (`save_figure`). Matplotlib's object API, no pyplot:
no global state, works headless and in threads.
"""
from collections import Counter
from pathlib import Path

from .filter import funnel_figure  # the filter step's drawing: one funnel figure for both


def plot_filter(funnel, out_dir, name):
    """The filter section's figure: the filter step's own funnel drawing, saved beside the other figures."""
    return save_figure(funnel_figure(funnel), out_dir, name)


def save_figure(figure, out_dir, name, tight=True):
    """Write `name`.png and `name`.svg under out_dir; returns the PNG's file name (the report links it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tight:  # a figure with a shared colour bar lays itself out (constrained layout)
        figure.tight_layout()
    figure.savefig(out_dir / f"{name}.png", dpi=110)
    figure.savefig(out_dir / f"{name}.svg")
    return f"{name}.png"


def _figure(width, height, **layout):
    from matplotlib.figure import Figure  # no pyplot: no global state, works headless and in threads

    return Figure(figsize=(width, height), **layout)


def plot_augment(section, out_dir, name):
    methods = list(section["methods"])
    figure = _figure(max(4, 1.2 * len(methods) + 2), 3)
    axes = figure.add_subplot(1, 1, 1)
    kept = [section["methods"][m]["kept"] for m in methods]
    rejected = [section["methods"][m]["rejected"] for m in methods]
    axes.bar(methods, kept, label="kept", color="tab:green")
    axes.bar(methods, rejected, bottom=kept, label="rejected", color="tab:red")
    axes.set_ylabel("questions")
    axes.set_title("augmentation: kept and rejected per method", fontsize=9)
    axes.legend(fontsize=8)
    return save_figure(figure, out_dir, name)


def _bars_with_intervals(axes, labels, shares, color=None):
    values = [100 * (s["share"] or 0) for s in shares]
    low = [v - 100 * s["ci95"][0] for v, s in zip(values, shares)]
    high = [100 * s["ci95"][1] - v for v, s in zip(values, shares)]
    axes.bar([f"{label}\nn={s['n']}" for label, s in zip(labels, shares)], values, yerr=[low, high], capsize=3,
             color=color)


def plot_synthesis(section, out_dir, name):
    stages = list(section["stages"])
    figure = _figure(4.5 * max(1, len(stages)), 3.2)
    for position, stage in enumerate(stages, 1):
        entry = section["stages"][stage]
        axes = figure.add_subplot(1, len(stages), position)
        keys = [key for key in ("boxed", "correct", "with_code", "prefix_cot") if entry.get(key)]
        _bars_with_intervals(axes, keys, [entry[key] for key in keys], "tab:purple")
        axes.set_ylim(0, 105)
        axes.set_ylabel("% of solutions (95 % CI)")
        axes.set_title(f"synthesis, {stage}: {entry['solutions']} solutions", fontsize=9)
    return save_figure(figure, out_dir, name)


def plot_accuracy(entries, out_dir, name="accuracy"):
    return save_figure(accuracy_figure(entries), out_dir, name, tight=False)


def accuracy_figure(entries, panels_per_row=4):
    """A heatmap per evaluated model (benchmark rows x mode columns), each cell its accuracy %, 95 % Wilson
    interval and correct/n; one colour scale (0-100 %) for all panels, so models compare at a glance."""
    benchmarks = sorted({e["benchmark"] for e in entries})
    modes = sorted({e["mode"] for e in entries})
    models = sorted({(e["run"], e["role"], e["model"]) for e in entries}, key=lambda m: (m[0], m[1] != "base", m[1]))
    several_runs = len({m[0] for m in models}) > 1
    columns = min(panels_per_row, len(models))
    rows = -(-len(models) // columns)
    figure = _figure(1.2 + columns * (1.0 + 1.0 * len(modes)), 0.9 + rows * (0.7 + 0.5 * len(benchmarks)),
                     layout="constrained")
    cells = {(e["run"], e["role"], e["model"], e["benchmark"], e["mode"]): e["accuracy"] for e in entries}
    for position, model in enumerate(models, 1):
        axes = figure.add_subplot(rows, columns, position)
        grid = [[cells.get((*model, benchmark, mode)) for mode in modes] for benchmark in benchmarks]
        values = [[float("nan") if a is None or a["share"] is None else 100 * a["share"] for a in row]
                  for row in grid]
        image = axes.imshow(values, cmap="YlGnBu", vmin=0, vmax=100, aspect="auto")
        for y, row in enumerate(grid):
            for x, a in enumerate(row):
                axes.text(x, y, _cell_text(a), ha="center", va="center", fontsize=7,
                          color="white" if values[y][x] > 60 else "black")
        axes.set_xticks(range(len(modes)), modes, fontsize=8)
        axes.set_yticks(range(len(benchmarks)), benchmarks, fontsize=8)
        axes.xaxis.tick_top()
        short = model[2] if len(model[2]) <= 28 else "..." + model[2][-25:]
        axes.set_title(f"{model[1]}" + (f" ({model[0]})" if several_runs else "") + f"\n{short}", fontsize=8)
    figure.suptitle("accuracy % per benchmark and mode [95 % Wilson CI] correct/n (our runs)", fontsize=9)
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label="accuracy %")
    return figure


def _cell_text(accuracy):
    if accuracy is None or not accuracy["n"]:
        return "-"
    low, high = accuracy["ci95"]
    return (f"{100 * accuracy['share']:.1f}\n[{100 * low:.0f}-{100 * high:.0f}]\n"
            f"{accuracy['successes']}/{accuracy['n']}")


def plot_training(training, out_dir, name):
    figure = _figure(9, 3.2)
    loss_axes, lr_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for stage, entry in training.items():
        for axes, key in ((loss_axes, "loss"), (lr_axes, "learning_rate")):
            points = entry["curve"].get(key) or []
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=stage)
    loss_axes.set_title("training loss per step", fontsize=9)
    lr_axes.set_title("learning rate per step", fontsize=9)
    for axes in (loss_axes, lr_axes):
        axes.set_xlabel("step")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    return save_figure(figure, out_dir, name)


def plot_errors(entries, out_dir, name="errors"):
    """Left: execution errors by exception type per model and mode; right: rounds used."""
    with_rows = [e for e in entries if e["errors"]]
    keys = sorted({(e["run"], e["role"], e["mode"]) for e in with_rows})
    figure = _figure(10, 3.4)
    types_axes, rounds_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    width = 0.8 / max(1, len(keys))
    for index, key in enumerate(keys):
        group = [e for e in with_rows if (e["run"], e["role"], e["mode"]) == key]
        label = f"{key[1]} {key[2]}" + (f" ({key[0]})" if len({k[0] for k in keys}) > 1 else "")
        types, rounds = Counter(), Counter()
        for entry in group:
            types.update(entry["errors"]["by_exception"])
            rounds.update({int(k): v for k, v in entry["errors"]["rounds"].items()})
        if types:
            names = sorted(types)
            types_axes.barh([f"{label}: {n}" for n in names], [types[n] for n in names])
        steps = sorted(rounds)
        rounds_axes.bar([step + (index - (len(keys) - 1) / 2) * width for step in steps], [rounds[s] for s in steps],
                        width, label=label)
    types_axes.set_title("execution errors by exception type", fontsize=9)
    types_axes.tick_params(axis="y", labelsize=7)
    rounds_axes.set_title("rounds used per problem (model calls)", fontsize=9)
    rounds_axes.set_xlabel("rounds")
    rounds_axes.xaxis.get_major_locator().set_params(integer=True)
    rounds_axes.set_ylabel("problems")
    if keys:
        rounds_axes.legend(fontsize=7)
    return save_figure(figure, out_dir, name)
