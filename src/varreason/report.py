"""`report.md` and plots from the run's artifacts (nothing is recomputed here)."""

from __future__ import annotations

import json

from varreason.runs import RunDir


def _levels(summary: dict) -> list[str]:
    return sorted({d for m in summary.values() for d in m["by_difficulty"]}, key=lambda d: (len(d), d))


def plot_accuracy_by_difficulty(summary: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = _levels(summary)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, len(summary))
    for i, (name, m) in enumerate(summary.items()):
        blocks = [m["by_difficulty"].get(d) for d in levels]
        acc = [b["accuracy"] if b else 0.0 for b in blocks]
        err = [[(b["accuracy"] - b["ci_low"]) if b else 0 for b in blocks],
               [(b["ci_high"] - b["accuracy"]) if b else 0 for b in blocks]]
        xs = [j + i * width for j in range(len(levels))]
        ax.bar(xs, acc, width, yerr=err, capsize=3, label=name)
    ax.set_xticks([j + width * (len(summary) - 1) / 2 for j in range(len(levels))], [f"d={d}" for d in levels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (95% CI)")
    ax.set_title("Accuracy by difficulty")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss(history: list, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in history], [v for _, v in history])
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("weighted SFT loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run: RunDir) -> str | None:
    """Tables of accuracy overall / by difficulty / by task, the loss curve of each trained model, plots."""
    path = run.path / "eval" / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    stages = run.manifest()["stages"]
    plots = run.path / "plots"
    plots.mkdir(exist_ok=True)
    plot_accuracy_by_difficulty(summary, plots / "accuracy_by_difficulty.png")
    levels = _levels(summary)
    lines = [f"# Run report: {run.path.name}", "", "## Held-out accuracy", "",
             "| model | overall | 95% CI | " + " | ".join(f"d={d}" for d in levels) + " |",
             "|---|---|---|" + "---|" * len(levels)]
    for name, m in summary.items():
        cells = [f"{m['by_difficulty'][d]['accuracy']:.1%}" if d in m["by_difficulty"] else "-" for d in levels]
        lines.append(f"| {name} | {m['accuracy']:.1%} | [{m['ci_low']:.1%}, {m['ci_high']:.1%}] | "
                     + " | ".join(cells) + " |")
    lines += ["", "![accuracy by difficulty](plots/accuracy_by_difficulty.png)", ""]
    for name, entry in stages.items():
        history = entry["counts"].get("loss_history") if isinstance(entry.get("counts"), dict) else None
        if history:
            plot_loss(history, plots / f"loss_{name}.png", f"training loss: {name}")
            c = entry["counts"]
            lines += [f"## Training: {name}", "",
                      (f"{c['examples']} examples, {c['optimizer_steps']} optimiser steps, normalizer "
                       f"`{c['normalizer']}`, {c['wall_seconds']:.0f} s, {c['tokens_per_second']:.0f} tokens/s."), "",
                      f"![loss {name}](plots/loss_{name}.png)", ""]
    lines += ["## Stages", "", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {name} | {entry['wall_seconds']:.1f} |" for name, entry in stages.items()]
    text = "\n".join(lines) + "\n"
    run.write_text("report.md", text)
    return text
