"""`report.md` and plots from the run's artifacts (nothing is recomputed here)."""

from __future__ import annotations

from varreason.runs import RunDir


def difficulty_levels(summary: dict) -> list[str]:
    """Difficulty levels to show; none when no problem has one (0 means "not given", as in user data without a
    difficulty column)."""
    levels = sorted({d for m in summary.values() for d in m["by_difficulty"]}, key=lambda d: (len(d), d))
    return [] if levels == ["0"] else levels


def difficulty_label(level: str) -> str:
    return "no d" if level == "0" else f"d={level}"


def plot_accuracy_by_difficulty(summary: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = difficulty_levels(summary)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, len(summary))
    for i, (name, m) in enumerate(summary.items()):
        blocks = [m["by_difficulty"].get(d) for d in levels]
        acc = [b["accuracy"] if b else 0.0 for b in blocks]
        err = [[(b["accuracy"] - b["ci_low"]) if b else 0 for b in blocks],
               [(b["ci_high"] - b["accuracy"]) if b else 0 for b in blocks]]
        xs = [j + i * width for j in range(len(levels))]
        ax.bar(xs, acc, width, yerr=err, capsize=3, label=name)
    ax.set_xticks([j + width * (len(summary) - 1) / 2 for j in range(len(levels))], [difficulty_label(d) for d in levels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (95% CI)")
    ax.set_title("Accuracy by difficulty")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss(history: list, path, title: str, nll_per_token: list | None = None) -> None:
    """The logged objective and, when recorded, the weighted NLL per supervised token (`training.py`): with the
    constant normalizer the objective follows the batches' token counts, the per-token NLL the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in history], [v for _, v in history], label="objective (weighted SFT loss)")
    if nll_per_token:
        ax.plot([s for s, _ in nll_per_token], [v for _, v in nll_per_token], label="NLL per supervised token")
        ax.legend()
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weights(weights: list[dict], plots) -> None:
    """rho~ of every eligible trace, the largest rho~ of each question, and the ESS of each question."""
    plt = _plt()
    questions = {r["question_id"]: r for r in weights if not r["fallback"]}
    k = max((r["k"] for r in weights), default=0) + 1
    top: dict = {}
    for r in weights:
        if not r["fallback"]:
            top[r["question_id"]] = max(top.get(r["question_id"], 0.0), r["rho_tilde"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].hist([r["rho_tilde"] for r in weights if r["eligible"]], bins=20, range=(0, 1), alpha=0.6,
                 label="every eligible trace")
    axes[0].hist(list(top.values()), bins=20, range=(0, 1), alpha=0.6, label="largest per question")
    axes[0].set_xlabel("normalised weight rho~")
    axes[0].set_ylabel("count")
    axes[0].set_title("rho~ distribution")
    axes[0].legend()
    axes[1].hist([r["ess"] for r in questions.values()], bins=min(4 * k, 40), range=(1, k))
    axes[1].set_xlabel(f"effective sample size (of K = {k})")
    axes[1].set_ylabel("questions")
    axes[1].set_title("ESS per question")
    fig.tight_layout()
    fig.savefig(plots / "weights.png", dpi=120)
    plt.close(fig)


def plot_length_vs_ratio(weights: list[dict], path) -> None:
    plt = _plt()
    pts = [r for r in weights if r["log_ratio"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for chosen, color, label in ((False, "tab:gray", "other traces"), (True, "tab:red", "selected (argmax rho)")):
        sub = [r for r in pts if r["best"] == chosen]
        ax.scatter([r["trace_tokens"] for r in sub], [r["log_ratio"] for r in sub], s=4, alpha=0.4, c=color,
                   label=label)
    ax.set_xlabel("trace length (tokens)")
    ax.set_ylabel("log ratio log pi0(z|x) - log q(z|x,y')")
    ax.set_title("Trace length vs log ratio")
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trace_quality(run: RunDir) -> dict | None:
    """By difficulty: share of pi0's answers that are correct after q's traces vs after pi0's own traces."""
    from collections import defaultdict

    rollouts_path, prior_path = run.path / "scores/rollouts.parquet", run.path / "scores/prior_samples.parquet"
    if not rollouts_path.exists() or not prior_path.exists():
        return None
    difficulty = {r["id"]: str(r["difficulty"]) for r in run.read_rows("data/train.parquet")}
    out: dict = defaultdict(lambda: {"q": [0, 0], "pi0": [0, 0]})
    for source, rows in (("q", run.read_rows("scores/rollouts.parquet")),
                         ("pi0", run.read_rows("scores/prior_samples.parquet"))):
        for r in rows:
            for level in (difficulty[r["question_id"]], "all"):
                out[level][source][0] += int(r["correct"])
                out[level][source][1] += 1
    return {d: {s: (c / n if n else 0.0) for s, (c, n) in v.items()} for d, v in out.items()}


def plot_trace_quality(quality: dict, path) -> None:
    plt = _plt()
    levels = sorted(quality, key=lambda d: (d == "all", len(d), d))
    if levels == ["0", "all"]:  # no difficulty given: the one group is all of them
        levels = ["all"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(levels))
    ax.bar([x - 0.2 for x in xs], [quality[d]["pi0"] for d in levels], 0.4, label="pi0's own traces")
    ax.bar([x + 0.2 for x in xs], [quality[d]["q"] for d in levels], 0.4, label="q's traces (hinted)")
    ax.set_xticks(list(xs), [d if d == "all" else difficulty_label(d) for d in levels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of pi0's answers correct")
    ax.set_title("Traces that lead pi0 to the right answer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _variational_section(run: RunDir, plots) -> list[str]:
    if not (run.path / "weights.parquet").exists():
        return []
    weights = run.read_rows("weights.parquet")
    stages = run.manifest()["stages"]
    w = stages.get("weights", {}).get("counts", {})
    b = stages.get("build", {}).get("counts", {})
    plot_weights(weights, plots)
    plot_length_vs_ratio(weights, plots / "length_vs_log_ratio.png")
    lines = ["## Importance weights", "",
             (f"Estimator `{w.get('estimator')}`, ratio `{w.get('ratio')}`: {w.get('questions')} questions, "
             f"{w.get('traces')} traces, {w.get('eligible')} eligible; mean ESS {w.get('mean_ess', 0):.2f}; "
             f"**{w.get('fallbacks')} questions fell back to their teacher trace** (no eligible trace)."), ""]
    if b:
        lines += [(f"Training set (`build.mode: {b.get('mode')}`, mix {b.get('mix')}): {b.get('rows')} rows, "
                  f"{b.get('posterior_rows')} from q, {b.get('teacher_rows')} teacher, {b.get('fallbacks')} fallbacks, "
                  f"{b.get('dropped_below_min_weight')} dropped below `min_weight`."), ""]
    lines += ["![weights](plots/weights.png)", "", "![length vs log ratio](plots/length_vs_log_ratio.png)", ""]
    quality = trace_quality(run)
    if quality:
        plot_trace_quality(quality, plots / "trace_quality.png")
        lines += [("Share of pi0's answers that are correct after q's (hinted) traces vs after pi0's own traces "
                  f"(all: {quality['all']['q']:.1%} vs {quality['all']['pi0']:.1%})."), "",
                  "![trace quality](plots/trace_quality.png)", ""]
    return lines


def write_report(run: RunDir, stale: list[str] = ()) -> str | None:
    """Tables of accuracy overall / by difficulty / by task, the loss curve of each trained model, plots; first, the
    artifacts made from inputs the folder no longer holds (`stale`), so no number is read beside the wrong data."""
    summary = run.read_json("eval/summary.json")
    if summary is None:
        return None
    stages = run.manifest()["stages"]
    plots = run.path / "plots"
    plots.mkdir(exist_ok=True)
    levels = difficulty_levels(summary)
    if levels:
        plot_accuracy_by_difficulty(summary, plots / "accuracy_by_difficulty.png")
    lines = [f"# Run report: {run.path.name}", ""]
    if stale:
        lines += ["**Stale**: made from artifacts since replaced, so their numbers do not describe this folder's "
                  "current data: " + "; ".join(stale) + ".", ""]
    lines += ["## Held-out accuracy", "",
             "| model | overall | 95% CI |" + "".join(f" {difficulty_label(d)} |" for d in levels),
             "|---|---|---|" + "---|" * len(levels)]
    for name, m in summary.items():
        cells = [f" {m['by_difficulty'][d]['accuracy']:.1%} |" if d in m["by_difficulty"] else " - |" for d in levels]
        lines.append(f"| {name} | {m['accuracy']:.1%} | [{m['ci_low']:.1%}, {m['ci_high']:.1%}] |" + "".join(cells))
    lines += ["", "![accuracy by difficulty](plots/accuracy_by_difficulty.png)" if levels
              else "No difficulty given: accuracy overall only.", ""]
    lines += _variational_section(run, plots)
    for name, entry in stages.items():
        history = entry["counts"].get("loss_history") if isinstance(entry.get("counts"), dict) else None
        if history:
            plot_loss(history, plots / f"loss_{name}.png", f"training loss: {name}",
                      entry["counts"].get("nll_per_token_history"))
            c = entry["counts"]
            nll = c.get("nll_per_token_history") or []
            fit = (f" NLL per supervised token {nll[0][1]:.3f} at step {nll[0][0]}, {nll[-1][1]:.3f} at step "
                   f"{nll[-1][0]}." if len(nll) > 1 else "")
            lines += [f"## Training: {name}", "",
                      (f"{c['examples']} examples, {c['optimizer_steps']} optimiser steps, normalizer "
                       f"`{c['normalizer']}`, {c['wall_seconds']:.0f} s, {c['tokens_per_second']:.0f} tokens/s.{fit}"),
                      "", f"![loss {name}](plots/loss_{name}.png)", ""]
    lines += ["## Stages", "", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {name} | {entry['wall_seconds']:.1f} |" for name, entry in stages.items()]
    text = "\n".join(lines) + "\n"
    run.write_text("report.md", text)
    return text
