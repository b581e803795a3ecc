"""The accuracy-bias diagnostic (paper §4): the weight each method really puts on each question's training signal,
against that question's difficulty P, beside the paper's curves RFT ∝ P, GRPO ∝ √(P/(1−P)), variational ∝ 1.

Measured from each method's own artifacts, never from the formulas:
- variational / no-hint: the summed row weight of the question in `train/final.parquet` (q's or pi0's traces; the
  teacher mix rows, the same for every question, are left out);
- RFT: the summed row weight of the question's kept traces in `train/<rft.name>.parquet` (0 when none was correct);
- GRPO: per rollout group of the training run (`grpo/<name>/rewards.parquet`), the share of the expected policy
  gradient on its correct completions, (1/G) Σ_correct r_j / s (`objectives.group_forward_kl_weight`).
P is pi0's accuracy on the question over its K no-hint samples (`sample.proposal: prior`). GRPO's weight of a
question is the mean over its groups; GRPO is also binned by the accuracy of each group's own rollouts (the policy's P
at that step, the P of the formula), where the measured weight is an exact function of P: `group_bins`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from varreason import objectives
from varreason.runs import RunDir

if TYPE_CHECKING:
    from varreason.stages.methods import Bias

FORMULA_LABEL = {"rft": "∝ P", "grpo": "∝ √(P/(1−P))", "variational": "∝ 1"}


def pi0_accuracy(samples: list[dict]) -> dict[str, float]:
    """P per question: the share of pi0's no-hint samples whose answer verified."""
    hits: dict = defaultdict(list)
    for r in samples:
        hits[r["question_id"]].append(bool(r["correct"]))
    return {q: sum(v) / len(v) for q, v in hits.items()}


def sft_question_weights(rows: list[dict], sources: tuple[str, ...], questions) -> dict[str, float]:
    """Summed row weight per question over rows of the given sources; questions without rows get 0."""
    out = {q: 0.0 for q in questions}
    for r in rows:
        if r["source"] in sources and r["question_id"] in out:
            out[r["question_id"]] += float(r["weight"])
    return out


def grpo_group_weights(log: list[dict], scale: str) -> list[tuple[float, float, str]]:
    """(P of the group, its forward-KL weight, question id) for every rollout group in the reward log."""
    batches: dict = defaultdict(list)
    for r in log:
        batches[r["batch"]].append(r)
    points = []
    for rows in batches.values():
        batch_std = float(np.std([r["reward"] for r in rows], ddof=1)) if len(rows) > 1 else 0.0
        groups: dict = defaultdict(list)
        for r in rows:
            groups[r["question_id"]].append(r)
        for q, g in groups.items():
            correct = [r["correct"] for r in g]
            w = objectives.group_forward_kl_weight([r["reward"] for r in g], correct, scale, batch_std=batch_std)
            points.append((sum(correct) / len(correct), w, q))
    return points


def binned(points: list[tuple[float, float]]) -> list[dict]:
    """Mean weight (and its standard error) at each distinct P."""
    by_p: dict = defaultdict(list)
    for p, w in points:
        by_p[round(p, 6)].append(w)
    out = []
    for p in sorted(by_p):
        ws = np.array(by_p[p])
        sem = float(ws.std(ddof=1) / math.sqrt(len(ws))) if len(ws) > 1 else 0.0
        out.append({"p": p, "mean_weight": float(ws.mean()), "sem": sem, "n": len(ws)})
    return out


def measure(source: Bias, cfg, run: RunDir, p_of: dict[str, float]) -> dict | None:
    """The measured curve of one method (its declaration's `bias`): bins, fitted scale of its formula and the relative
    RMS error of that fit (fitted on 0 < P < 1; the weights at P = 0 and 1 are reported in the bins)."""
    extra: dict = {}  # rollout groups only: the same weights binned by each group's own P
    if source.rows is not None:
        if not (run.path / source.rows(cfg)).exists():
            return None
        weights = sft_question_weights(run.read_rows(source.rows(cfg)), source.sources, p_of)
        points, x_source = [(p_of[q], w) for q, w in weights.items()], "pi0"
    else:
        path = source.rewards(cfg)
        if not (run.path / path).exists():
            return None
        groups = grpo_group_weights(run.read_rows(path), cfg.grpo.scale_rewards)
        per_question: dict = defaultdict(list)
        for _, w, q in groups:
            if q in p_of:
                per_question[q].append(w)
        # the question's mean weight over its groups against pi0's P (the issue's axis); by the group's own P too
        points, x_source = [(p_of[q], float(np.mean(ws))) for q, ws in per_question.items()], "pi0"
        extra = {"group_bins": binned([(p, w) for p, w, _ in groups]), "groups": len(groups)}
        if not points:  # no question with a known pi0 accuracy: fall back to the group's own P
            points, x_source, extra = [(p, w) for p, w, _ in groups], "group", {}
    if not points:
        return None
    formula = source.formula(cfg)
    bins = binned(points)
    inner = [b for b in bins if 0.0 < b["p"] < 1.0]  # P = 0 or 1: no method has a contrast to learn from there
    scale, rel = objectives.fit_implied_scale([b["p"] for b in inner], [b["mean_weight"] for b in inner], formula)
    out = {"formula": formula, "x": x_source, "points": len(points), "bins": bins, "scale": scale,
           "relative_rmse": rel}
    if extra.get("group_bins"):
        inner = [b for b in extra["group_bins"] if 0.0 < b["p"] < 1.0]
        g_scale, g_rel = objectives.fit_implied_scale([b["p"] for b in inner], [b["mean_weight"] for b in inner],
                                                      formula)
        out.update(extra, group_scale=g_scale, group_relative_rmse=g_rel)
    return out


def plot_bias(curves: dict[str, dict], path) -> None:
    """One panel per method: measured mean weight per P (± s.e.), its formula scaled to it, and the other curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    grid = np.linspace(0.0, 0.97, 200)
    for ax, name in zip(axes.flat, names):
        c = curves[name]
        xs = [b["p"] for b in c["bins"]]
        ys = [b["mean_weight"] for b in c["bins"]]
        ax.errorbar(xs, ys, yerr=[b["sem"] for b in c["bins"]], fmt="o", color="black", capsize=2,
                    label="measured" + (" (per question)" if c.get("group_bins") else ""), zorder=3)
        if c.get("group_bins"):
            ax.plot([b["p"] for b in c["group_bins"]], [b["mean_weight"] for b in c["group_bins"]], "x",
                    color="tab:blue", label="measured per group, x = the group's P", zorder=3)
        ref = np.mean([y for y in ys if y > 0]) if any(y > 0 for y in ys) else 1.0
        for formula, style in (("rft", ":"), ("grpo", "--"), ("variational", "-.")):
            f = np.array([objectives.implied_weight(float(p), formula) for p in grid])
            if formula == c["formula"] and math.isfinite(c["scale"]):
                ax.plot(grid, c["scale"] * f, style, color="tab:red", lw=2,
                        label=f"{formula} {FORMULA_LABEL[formula]} (fit)")
            else:  # the other curves, scaled to the measured mean for shape only
                mid = np.mean(f[(grid > 0.05) & (grid < 0.9)])
                ax.plot(grid, f * ref / mid if mid > 0 else f, style, color="grey", lw=1,
                        label=f"{formula} {FORMULA_LABEL[formula]}")
        tops = ys + [ref] + [b["mean_weight"] for b in c.get("group_bins", [])]
        ax.set_ylim(bottom=0, top=max(tops) * 1.25 + 1e-9)
        ax.set_xlim(-0.03, 1.03)
        rmse = c["relative_rmse"]
        ax.set_title(f"{name} (rel. RMSE {rmse:.2f})" if math.isfinite(rmse) else f"{name} (no 0 < P < 1 to fit)",
                     fontsize=9)
        ax.set_xlabel("P: pi0's accuracy on the question" if c["x"] == "pi0" else "P: accuracy of the GRPO group",
                      fontsize=8)
        ax.set_ylabel("weight on the question", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
