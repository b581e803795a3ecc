"""Metrics over verified samples: accuracy with a Wilson 95% interval, overall and by difficulty / task."""

from __future__ import annotations

import math
from collections import defaultdict


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; sensible at 0 and at n (unlike the normal interval)."""
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


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
