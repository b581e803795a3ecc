"""Metrics over verified samples.

- `wilson_interval`, `summarize`: accuracy with a Wilson 95% interval, overall and by difficulty / task;
  `mcnemar_exact`: whether two models differ on the same problems (paired).
- Benchmark metrics (the paper's evaluation, original-recipe.md §4): `avg_at_n` (mean over problems of the
  fraction of a problem's n samples that are correct), the unbiased `pass_at_k` of Chen et al. 2021 and its
  curve over k, a percentile `bootstrap_ci` over problems, `macro_average` over benchmarks, and
  `benchmark_metrics`, which computes them all from per-sample records.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; sensible at 0 and at n (unlike the normal interval)."""
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired right/wrong outcomes: under "no difference" the problems only one
    model solved split as Binomial(b + c, 1/2); p = 2 P(X <= min(b, c)), capped at 1."""
    b, c = _check_int("only_first", only_first), _check_int("only_second", only_second)
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got {b} and {c}")
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _block(correct: int, total: int) -> dict:
    low, high = wilson_interval(correct, total)
    return {"accuracy": correct / total if total else 0.0, "ci_low": low, "ci_high": high, "n": total,
            "correct": correct}


def summarize(records: list[dict]) -> dict:
    """records: one per sample with `correct` (bool), `difficulty` (int), `task` (str), `format_ok` (bool).

    Returns {accuracy, ci_low, ci_high, n, correct, format_error_rate, by_difficulty: {d: block}, by_task: ...}.
    """
    total = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    out = _block(correct, total)
    out["format_error_rate"] = (sum(not r.get("format_ok", True) for r in records) / total) if total else 0.0
    for key, name in (("difficulty", "by_difficulty"), ("task", "by_task")):
        groups: dict = defaultdict(lambda: [0, 0])
        for r in records:
            groups[r[key]][0] += bool(r["correct"])
            groups[r[key]][1] += 1
        out[name] = {str(k): _block(c, n) for k, (c, n) in sorted(groups.items())}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Benchmark metrics: avg@n, unbiased pass@k, bootstrap intervals


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 for one problem with c correct of n samples: 1 - C(n-c, k) / C(n, k).

    Computed as `1 - prod_{i=n-c+1}^{n} (1 - k/i)`, which never forms the (huge) binomials. Needs 0 <= c <= n
    and 1 <= k <= n (ValueError otherwise); k > n - c gives exactly 1.0 (every k-subset holds a correct sample).
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if k > n - c:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_n(correct_counts: Sequence[int], n: int | Sequence[int]) -> float:
    """avg@n: the mean over problems of c/n (one count per problem; `n` one int, or one per problem)."""
    counts = np.asarray(list(correct_counts), dtype=float)
    if counts.size == 0:
        raise ValueError("avg_at_n needs at least one problem")
    ns = np.broadcast_to(np.asarray(n, dtype=float), counts.shape)
    if np.any(ns < 1) or np.any(counts < 0) or np.any(counts > ns):
        raise ValueError("need n >= 1 and 0 <= c <= n for every problem")
    return float(np.mean(counts / ns))


def pass_at_k_curve(per_problem: Iterable[tuple[int, int]], ks: Iterable[int] | None = None) -> dict[int, float]:
    """{k: mean over problems of pass_at_k(n_i, c_i, k)} from (n, c) per problem.

    Each problem uses its own n (ragged n is fine); k runs over 1..min n by default, and a given k must lie in
    1..min n (ValueError otherwise): a larger k is undefined for the problems with fewer samples.
    """
    pairs = [(int(n), int(c)) for n, c in per_problem]
    if not pairs:
        raise ValueError("pass_at_k_curve needs at least one problem")
    min_n = min(n for n, _ in pairs)
    ks = list(range(1, min_n + 1)) if ks is None else sorted({_check_int("k", k) for k in ks})
    for k in ks:
        if not 1 <= k <= min_n:
            raise ValueError(f"k={k} is outside 1..{min_n} (the smallest number of samples of a problem)")
    return {k: float(np.mean([pass_at_k(n, c, k) for n, c in pairs])) for k in ks}


_BOOT_CHUNK = 2_000_000  # resampled values held at once (16 MB of float64)


def bootstrap_ci(values: Sequence[float], stat: Callable = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (1 - alpha) of `stat` over per-problem scores.

    Resamples problems (not samples within a problem, which are correlated) with replacement, `n_boot` times,
    vectorised with numpy (in chunks that bound memory). `stat` is called as `stat(matrix, axis=1)` (numpy
    reductions); one that takes no `axis` is applied row by row. Deterministic for a given seed.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n_boot = _check_int("n_boot", n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    m = x.size
    rows = max(1, _BOOT_CHUNK // m)
    stats = []
    for start in range(0, n_boot, rows):
        sample = x[rng.integers(0, m, size=(min(rows, n_boot - start), m))]
        try:
            out = np.asarray(stat(sample, axis=1), dtype=float)
        except TypeError:
            out = np.asarray([stat(row) for row in sample], dtype=float)
        stats.append(out.reshape(-1))
    low, high = np.quantile(np.concatenate(stats), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def macro_average(per_benchmark: Mapping[str, float]) -> float:
    """The unweighted mean over benchmarks (each benchmark counts once, whatever its size)."""
    if not per_benchmark:
        raise ValueError("macro_average needs at least one benchmark")
    return float(np.mean([float(v) for v in per_benchmark.values()]))


def benchmark_metrics(records: Iterable[Mapping], ks: Iterable[int] | None = None, n_boot: int = 2000,
                      alpha: float = 0.05, seed: int = 0) -> dict:
    """Metrics of one benchmark from records, one per (problem, sample), each with `problem_id` and `correct`.

    Returns
      "avg@n": mean over problems of c_i / n_i (with the same n for all problems, this is the mean over all
               samples, SkyThought's "accuracy"; with ragged n each problem still counts once),
      "avg@n_ci": [low, high], the 95% (1 - alpha) percentile bootstrap interval over problems,
      "pass@k": {k: unbiased pass@k averaged over problems} for k in 1..min n (or `ks`); each problem uses its
                own n_i, and k stops at the smallest n_i, where pass@k is defined for every problem,
      "n_problems", "n_samples_per_problem" (min n_i, the n that bounds k), "n_samples_max", "n_samples".
    Raises ValueError on no records.
    """
    counts: dict = {}
    for r in records:
        entry = counts.setdefault(r["problem_id"], [0, 0])
        entry[0] += 1
        entry[1] += bool(r["correct"])
    if not counts:
        raise ValueError("benchmark_metrics needs at least one record")
    pairs = [(n, c) for n, c in counts.values()]
    ns = [n for n, _ in pairs]
    scores = [c / n for n, c in pairs]
    low, high = bootstrap_ci(scores, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "avg@n": avg_at_n([c for _, c in pairs], ns),
        "avg@n_ci": [low, high],
        "pass@k": pass_at_k_curve(pairs, ks),
        "n_problems": len(pairs),
        "n_samples_per_problem": min(ns),
        "n_samples_max": max(ns),
        "n_samples": sum(ns),
    }
