"""Majority voting (maj@k, self-consistency) and pass@k over k sampled solutions per problem.

- pass@k: the unbiased estimator of Chen et al. (2021): with n samples of which c are correct,
  ``1 - C(n-c, k) / C(n, k)`` per problem, averaged over problems (k <= n).
- maj@k: the share of problems whose most common answer among k samples is correct. Equivalent answers
  vote together (`evaluate.majority_answer`'s grouping: ``1/2`` and ``0.5`` are one answer); a tie goes to
  the answer seen first. For k < n it is averaged over `draws` seeded random subsets of k samples per
  problem (every subset when there are no more than `draws`), so maj@k uses all n samples, not the first k.
- Intervals: 95 % percentile bootstrap over problems (seeded), the unit of sampling being the problem.

Rows are evaluation trajectory rows (`id`, `sample`, `pred`, `correct`).
"""
import itertools
import math
import random

import numpy as np

from .grading import is_equivalent

BOOTSTRAP = 2000


def pass_at_k(n, c, k):
    """Unbiased pass@k of one problem with n samples, c of them correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, the problem has {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def answer_groups(rows):
    """Per sample (in order): the index of its answer's group of equivalent answers (None: no answer);
    per group: whether it is correct, and its first answer."""
    groups, correct, labels = [], [], []
    for row in rows:
        if row.get("pred") is None:
            labels.append(None)
            continue
        for index, representative in enumerate(groups):
            if is_equivalent(row["pred"], representative):
                labels.append(index)
                break
        else:
            groups.append(row["pred"])
            correct.append(bool(row["correct"]))
            labels.append(len(groups) - 1)
    return labels, correct, groups


def majority_label(labels, subset):
    """The group of the most common answer among the samples `subset` (ties: seen first); None if none."""
    counts = {}
    for index in subset:
        if labels[index] is not None:
            counts[labels[index]] = counts.get(labels[index], 0) + 1
    return max(counts, key=lambda label: (counts[label], -label)) if counts else None


def majority_correct(labels, correct, subset):
    """Whether the most common answer among the samples `subset` is correct."""
    best = majority_label(labels, subset)
    return best is not None and correct[best]


def maj_at_k(labels, correct, k, draws=32, seed=0):
    """Expected majority-vote correctness of one problem with k of its samples (see the module docs)."""
    n = len(labels)
    if k > n:
        raise ValueError(f"maj@{k} needs at least {k} samples, the problem has {n}")
    if math.comb(n, k) <= draws:
        subsets = list(itertools.combinations(range(n), k))
    else:
        rng = random.Random(seed)
        subsets = [sorted(rng.sample(range(n), k)) for _ in range(draws)]
    return sum(majority_correct(labels, correct, subset) for subset in subsets) / len(subsets)


def wilson_interval(successes, n, z=1.96):
    """95 % Wilson score interval for a proportion (well-behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(values, seed=0, resamples=BOOTSTRAP):
    """95 % percentile bootstrap interval of the mean of per-problem values (each in [0, 1]).

    When every problem has the same value the bootstrap has nothing to resample and would return a
    zero-width interval ([0, 0] for 0 of 40 solved): then the Wilson interval of that share is given."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return [0.0, 0.0]
    if np.ptp(values) == 0:
        return list(wilson_interval(float(values[0]) * len(values), len(values)))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def default_ks(n):
    """1, 2, 4, ... up to n, and n itself."""
    ks = [2 ** power for power in range(n.bit_length()) if 2 ** power <= n]
    return ks + ([n] if ks[-1] != n else [])


def group_by_problem(rows, n_samples=None):
    """{problem id: its rows, by sample}; a problem with fewer than `n_samples` rows is left out."""
    problems = {}
    for row in rows:
        problems.setdefault(row["id"], {})[row["sample"]] = row
    grouped = {pid: [samples[s] for s in sorted(samples)] for pid, samples in problems.items()}
    if n_samples:
        grouped = {pid: samples[:n_samples] for pid, samples in grouped.items() if len(samples) >= n_samples}
    return grouped


def voting_metrics(rows, n_samples, ks=None, draws=32, seed=0):
    """maj@k and pass@k (with intervals) for each k, over problems with `n_samples` samples each.

    Returns {"problems", "samples", "sample_accuracy", "by_k": {k: {maj, maj_ci95, pass, pass_ci95}}}."""
    problems = group_by_problem(rows, n_samples)
    ks = ks or default_ks(n_samples)
    labelled = [answer_groups(samples)[:2] for samples in problems.values()]
    counts = [sum(bool(row["correct"]) for row in samples) for samples in problems.values()]
    by_k = {}
    for k in ks:
        maj = [maj_at_k(labels, correct, k, draws, seed + index) for index, (labels, correct) in enumerate(labelled)]
        passed = [pass_at_k(n_samples, c, k) for c in counts]
        by_k[k] = {"maj": float(np.mean(maj)) if maj else 0.0, "maj_ci95": bootstrap_interval(maj, seed),
                   "pass": float(np.mean(passed)) if passed else 0.0, "pass_ci95": bootstrap_interval(passed, seed)}
    every = [c / n_samples for c in counts]
    return {"problems": len(problems), "samples": n_samples, "draws": draws,
            "sample_accuracy": float(np.mean(every)) if every else 0.0,
            "sample_accuracy_ci95": bootstrap_interval(every, seed), "by_k": by_k}
