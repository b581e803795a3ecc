"""The study of issue 15: which parts of variational reasoning carry its gain in our miniature, over seeds.

    python benchmarks/study.py --seeds 0 1 2 --set core   --root runs/study
    python benchmarks/study.py --seeds 0     --set extras --root runs/study
    python benchmarks/study.py --seeds 0 1 2 --aggregate-only --root runs/study

Every seed is one `varreason compare` folder (ROOT/seed<N>) on the demo config: every method starts from the same
pi0, and stages two methods share with the same config run once (compare adopts them). A later `--set` adds methods
to the same folders and reuses everything already done. Methods (see METHODS):

- baselines: sft (pi0), sft-matched (teacher data, the final model's init, steps and batch), sft-paper (the same
  with half the batch: the paper's own 17K comparison), rft (pi0's own traces at full coverage, verified);
- the hint: variational (the answer as hint), hint-solution (the reference solution, App. G), no-hint (pi0's own
  traces through the same weights and build: the paper's w/o y');
- estimators (est-acc, est-lik against variational's gml), K (k1, k2, k4 against variational's 8: the first k of
  the same 8 traces), coverage (cov800: 800 of the 4000 questions);
- extras: forward-kl (Algorithm 1's phi-phase, M = 4 traces of pi0 per question), rounds2 (T = 2) and its
  compute-matched sft (matched-2x: 500 steps), the 1K recipe's weighted build with the batch as set (weighted) and
  scaled by K (weighted-xk: K times the compute, as in the paper).
- issue 27 (every method of compare, `--config demo` or `--config countdown`): methods (compare's default list and
  hint-solution), rounds (+ T = 2 and T = 3), rounds-flops (+ SFT on the teacher data with T = 2's FLOPs).

Aggregate (ROOT/study.json, ROOT/study.md, plots in ROOT/plots): held-out accuracy per method, mean and t 95% CI over
seeds, hard problems (d4 + d5), exact McNemar against sft-matched (paired per seed, and pooled), and for the
variational methods q's rates of answering with the reference answer (its trace "ends at the hint") and of being
verified correct.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from variational_seeds import hard_accuracy, mean_ci

from varreason.eval.metrics import mcnemar_exact, wilson_interval
from varreason.stages.methods import METHODS

CORE_METHODS = ["sft", "sft-matched", "sft-paper", "variational", "no-hint", "rft"]
CORE_VARIANTS = {
    "hint-solution": {"method": "variational", "posterior.hint": "solution"},
    "est-acc": {"method": "variational", "weights.estimator": "accuracy"},
    "est-lik": {"method": "variational", "weights.estimator": "likelihood"},
    "k1": {"method": "variational", "weights.num_traces": 1},
    "k2": {"method": "variational", "weights.num_traces": 2},
    "k4": {"method": "variational", "weights.num_traces": 4},
    "cov800": {"method": "variational", "sample.num_questions": 800},
}
EXTRA_VARIANTS = {
    "forward-kl": {"method": "variational", "posterior.mode": "forward_kl", "posterior.num_generations": 4},
    "rounds2": {"method": "variational", "rounds": 2},
    "matched-2x": {"method": "sft-matched", "final.max_steps": 500},
    "weighted": {"method": "variational", "build.mode": "weighted", "build.mix": False},
    "weighted-xk": {"method": "variational", "build.mode": "weighted", "build.mix": False,
                    "build.weighted_batch": "scaled"},
}
# issue 27: every method of compare (its default list less grpo-debiased) and the solution hint, on both families;
# the rounds on sum / product. These sets run compare with the demo's own settings (no study rollouts, no sft-paper),
# so a plain `varreason compare --config demo` folder is a seed of them.
ALL_METHODS = ["sft", "sft-matched", "variational", "sft-matched-flops", "no-hint", "rft", "star", "trice", "latro",
               "self-distill", "grpo"]
ROUND_VARIANTS = {"rounds2": {"method": "variational", "rounds": 2}, "rounds3": {"method": "variational", "rounds": 3}}
# the control the rounds lack: SFT on the teacher data with the FLOPs of T = 2 (set "rounds-flops")
ROUND_CONTROLS = {"sft-flops-rounds2": {"method": "sft-matched-flops", "flops_of": "rounds2"}}
# issue 29: SmolLM2-135M (benchmarks/smollm2_study.yaml): the methods the issue names, forward-KL q against the teacher
# q (does it avoid copying the hint?), and LoRA against full fine-tuning for variational's final model (same rows and
# steps).
SMOLLM2_METHODS = ["sft", "sft-matched", "variational", "no-hint", "rft"]
SMOLLM2_VARIANTS = {"forward-kl": EXTRA_VARIANTS["forward-kl"],
                    # LoRA at 10x the full fine-tuning rate, as is usual for adapters (5e-5 barely moves them)
                    "variational-lora": {"method": "variational", "final.lora.r": 16, "final.learning_rate": 5.0e-4}}
SETS = {"core": (CORE_METHODS, CORE_VARIANTS),
        "extras": (CORE_METHODS, {**CORE_VARIANTS, **EXTRA_VARIANTS}),
        "smoke": (["sft", "sft-matched", "sft-paper", "variational"], {"forward-kl": EXTRA_VARIANTS["forward-kl"]}),
        "methods": (ALL_METHODS, {"hint-solution": CORE_VARIANTS["hint-solution"]}),
        "rounds": (ALL_METHODS, {"hint-solution": CORE_VARIANTS["hint-solution"], **ROUND_VARIANTS}),
        "smollm2": (SMOLLM2_METHODS, SMOLLM2_VARIANTS)}
SETS["rounds-flops"] = (ALL_METHODS, {**SETS["rounds"][1], **ROUND_CONTROLS})
PLAIN_SETS = {"methods", "rounds", "rounds-flops", "smollm2"}  # run without the study's rollouts and sft-paper
ALL_VARIANTS = {**CORE_VARIANTS, **EXTRA_VARIANTS, **ROUND_VARIANTS, **ROUND_CONTROLS, **SMOLLM2_VARIANTS}
# plotted by where a method's traces come from (its declared proposal, stages/methods.py)
COLORS = {"teacher": "tab:blue", "pi0": "tab:green", "pi0-greedy": "tab:green", "pi0-online": "tab:green",
          "q": "tab:orange", "trice-chain": "tab:orange"}  # TRICE's chains start from q's hinted traces


def proposal(name: str) -> str:
    """The proposal part of a method or of the study's variant of one (its declaration in stages/methods.py)."""
    base = ALL_VARIANTS.get(name, {}).get("method", name)
    return METHODS[base].proposal.name if base in METHODS else ""


# The study's rollouts (the demo preset has none since its GML estimator reads none): the accuracy estimator, the
# forward-KL phi-phase and q's rate of ending at a correct answer read them; the study's numbers were made with these.
ROLLOUTS = ["--rollout.num_generations", "4", "--rollout.prior_samples", "1"]


def run_seed(seed: int, root: Path, which: str, config: str, extra: list[str]) -> float:
    methods, variants = SETS[which]
    study_args = [] if which in PLAIN_SETS else ["--final.sft_paper", "true"] + ROLLOUTS
    cmd = [sys.executable, "-m", "varreason", "compare", "--config", config, "--output-dir", str(root / f"seed{seed}"),
           "--seed", str(seed), "--compare.methods", json.dumps(methods),
           "--compare.variants", json.dumps(variants)] + study_args + extra
    print("+", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    seconds = time.time() - start
    with (root / "wall_times.jsonl").open("a") as f:  # the study's wall time per seed and call (docs/study.md)
        threads = extra[extra.index("--num_threads") + 1] if "--num_threads" in extra[:-1] else "all"
        f.write(json.dumps({"seed": seed, "set": which, "config": config, "seconds": round(seconds, 1), "threads": threads,
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
                            "cpus": len(os.sched_getaffinity(0))}) + "\n")
    return seconds


def correct_by_problem(seed_dir: Path, name: str, entry: dict) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(seed_dir / "methods" / name / "eval" / entry["model"] / "samples.parquet").to_pylist()
    return {(r["question_id"], r["k"]): bool(r["correct"]) for r in rows}


def last_round(run_dir: Path) -> Path:
    """The folder of a method's last round (rounds/<T>/ when it ran T >= 2 rounds, else the method folder)."""
    rounds = sorted((run_dir / "rounds").glob("*"), key=lambda p: int(p.name)) if (run_dir / "rounds").exists() else []
    return rounds[-1] if rounds else run_dir


def round_seconds(run_dir: Path) -> float:
    """Wall time of the stages of rounds 2..T (compare's summary counts round 1's stages only)."""
    total = 0.0
    for folder in (run_dir / "rounds").glob("*") if (run_dir / "rounds").exists() else []:
        stages = json.loads((folder / "manifest.json").read_text())["stages"]
        total += sum(v["wall_seconds"] for v in stages.values() if "adopted_from" not in v)
    return total


def trace_rates(run_dir: Path) -> dict | None:
    """The method's sampled traces (its last round's): the share verified correct, whichever model proposed them (q
    with the hint, or pi0 for no-hint and rft), and for q's the share whose answer is the reference answer."""
    manifest = json.loads((last_round(run_dir) / "manifest.json").read_text())
    counts = manifest["stages"].get("sample", {}).get("counts", {})
    if not counts.get("traces"):
        return None
    out = {"proposal": counts.get("proposal"), "correct": counts["correct"] / counts["traces"],
           "traces": counts["traces"], "trace_tokens": counts.get("mean_trace_tokens")}
    if counts.get("proposal") != "prior":
        out["answer_equals_hint"] = counts["answer_equals_hint"] / counts["traces"]
    return out


def weight_spread(run_dir: Path) -> dict | None:
    """What the importance weights did (the last round's weights.parquet): mean ESS of the self-normalised weights per
    question (of K), the mean within-question standard deviation of log rho, the mean share of the heaviest trace, and
    the share of questions whose ESS is below 2 (one or two traces carry the question). And pi0's mean probability of
    the reference answer after a trace, over all traces and over the selected ones (GML's p(y* | x, z), scored under
    pi0 without the hint): a measure of the traces that does not read the answer the proposal wrote after them."""
    path = last_round(run_dir) / "weights.parquet"
    if not path.exists():
        return None
    import numpy as np
    import pandas as pd

    w = pd.read_parquet(path, columns=["question_id", "log_rho", "rho_tilde", "ess", "eligible", "best",
                                       "log_p_answer_gml"])
    w = w[w["eligible"]]
    if w.empty:
        return None
    by_q = w.groupby("question_id")
    ess = by_q["ess"].first()
    p_answer = np.exp(w["log_p_answer_gml"].astype(float))
    return {"k": float(by_q.size().mean()), "mean_ess": float(ess.mean()),
            "log_rho_std": float(by_q["log_rho"].std(ddof=0).mean()),
            "max_share": float(by_q["rho_tilde"].max().mean()), "ess_below_2": float((ess < 2).mean()),
            "p_answer": float(p_answer.mean()), "p_answer_best": float(p_answer[w["best"].astype(bool)].mean())}


def selection(run_dir: Path) -> dict | None:
    """Where the proposal helps, by training difficulty (the last round's traces): the share of traces verified
    correct, the share of questions with at least one correct trace of K, and the share whose selected trace (the
    weights' `best`, the trace the best build trains on) is correct."""
    folder = last_round(run_dir)
    weights, samples = folder / "weights.parquet", folder / "samples" / "posterior.parquet"
    if not weights.exists() or not samples.exists():
        return None
    import pandas as pd

    traces = pd.read_parquet(samples, columns=["question_id", "k", "correct"]).merge(
        pd.read_parquet(weights, columns=["question_id", "k", "best"]), on=["question_id", "k"], how="left")
    levels = pd.read_parquet(run_dir / "data" / "train.parquet", columns=["id", "difficulty"])
    traces = traces.merge(levels.rename(columns={"id": "question_id"}), on="question_id")
    traces["best"] = traces["best"].fillna(False).astype(bool)
    out = {}
    for level, t in traces.groupby("difficulty"):
        per_question = t.groupby("question_id")["correct"].max()
        chosen = t[t["best"]]
        out[str(level)] = {"traces_correct": float(t["correct"].mean()), "solved": float(per_question.mean()),
                           "best_correct": float(chosen["correct"].mean()) if len(chosen) else float("nan"),
                           "questions": len(per_question)}
    return out


def mean_levels(found: list[dict]) -> dict:
    """Per difficulty and key, the mean over seeds of `selection`'s shares."""
    levels = sorted({d for f in found for d in f}, key=int)
    return {d: {k: nan_mean([f[d][k] for f in found if d in f]) for k in ("traces_correct", "solved", "best_correct")}
            for d in levels}


def nan_mean(values: list[float]) -> float:
    """The mean of the values that are not NaN (a level without a selected trace in a seed is left out)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def aggregate(root: Path, seeds: list[int]) -> dict:
    details = {s: json.loads((root / f"seed{s}" / "summary.json").read_text()) for s in seeds
               if (root / f"seed{s}" / "summary.json").exists()}  # compare updates it after every method
    methods = list(dict.fromkeys(m for d in details.values() for m in d))
    out: dict = {"seeds": sorted(details), "methods": {}}
    for name in methods:
        seeds_with = [s for s in details if name in details[s]]
        entries = [details[s][name] for s in seeds_with]
        acc = [e["accuracy"] for e in entries]
        hard = [hard_accuracy(e) for e in entries]
        correct, n = sum(round(e["accuracy"] * e["n"]) for e in entries), sum(e["n"] for e in entries)
        (m, h), (hm, hh) = mean_ci(acc), mean_ci(hard)
        row = {"proposal": proposal(name), "seeds": seeds_with, "accuracy": acc, "mean": m, "ci": h, "hard": hard, "hard_mean": hm, "hard_ci": hh,
               "pooled": correct / n, "pooled_ci": list(wilson_interval(correct, n)), "n": n}
        for against in ("sft", "matched-2x", *PAIRED):
            if name == against or not all(against in details[s] for s in seeds_with):
                continue
            pairs = {}
            for s in seeds_with:
                a = correct_by_problem(root / f"seed{s}", name, details[s][name])
                b = correct_by_problem(root / f"seed{s}", against, details[s][against])
                only_a = sum(v and not b[k] for k, v in a.items())
                only_b = sum(b[k] and not v for k, v in a.items())
                pairs[s] = {"only_model": only_a, "only_other": only_b, "p": mcnemar_exact(only_a, only_b)}
            total_a, total_b = sum(p["only_model"] for p in pairs.values()), sum(p["only_other"] for p in pairs.values())
            row[f"vs_{against}"] = {"per_seed": pairs, "only_model": total_a, "only_other": total_b,
                                    "p_pooled": mcnemar_exact(total_a, total_b)}
        rates = [r for s in seeds_with if (r := trace_rates(root / f"seed{s}" / "methods" / name))]
        if rates:
            row["traces_correct"] = sum(r["correct"] for r in rates) / len(rates)
            if all(r["trace_tokens"] is not None for r in rates):
                row["trace_tokens"] = sum(r["trace_tokens"] for r in rates) / len(rates)
            if all("answer_equals_hint" in r for r in rates):
                row["q_answer_equals_hint"] = sum(r["answer_equals_hint"] for r in rates) / len(rates)
                row["q_correct"] = row["traces_correct"]
        spreads = [w for s in seeds_with if (w := weight_spread(root / f"seed{s}" / "methods" / name))]
        if spreads:
            row["weights"] = {k: sum(w[k] for w in spreads) / len(spreads) for k in spreads[0]}
        found = [f for s in seeds_with if (f := selection(root / f"seed{s}" / "methods" / name))]
        if found:
            row["selection"] = mean_levels(found)
        levels = sorted({d for e in entries for d in e["by_difficulty"]}, key=int)
        row["by_difficulty"] = {d: sum(e["by_difficulty"][d]["accuracy"] for e in entries if d in e["by_difficulty"])
                                / sum(d in e["by_difficulty"] for e in entries) for d in levels}
        spent = [e.get("compute") for e in entries]
        if all(spent):  # the compute account (compare since issue 26): the method's own stages, and pi0's
            row["compute"] = {k: sum(c[k] for c in spent) / len(spent) for k in ("generated", "prefilled", "scored",
                                                                               "trained")}
            row["flops"] = sum(c["flops"]["total"] for c in spent) / len(spent)
            row["pi0_flops"] = sum(e["pi0_compute"]["flops"]["total"] for e in entries) / len(entries)
        row["method_wall_seconds"] = [e["method_wall_seconds"] + round_seconds(root / f"seed{s}" / "methods" / name)
                                      for s, e in zip(seeds_with, entries)]
        out["methods"][name] = row
    return out


def _pair(r: dict, key: str) -> str:
    v = r.get(key)
    return f"{v['only_model']} / {v['only_other']}, p = {v['p_pooled']:.2g}" if v else "-"


def _rate(r: dict, key: str) -> str:
    return f"{r[key]:.1%}" if key in r else "-"


def _tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:.0f}"


PAIRED = ("sft-matched", "sft-matched-flops", "sft-paper", "no-hint", "variational", *ROUND_CONTROLS)


def write_markdown(result: dict, root: Path) -> str:
    methods = result["methods"]
    paired = [a for a in PAIRED if any(f"vs_{a}" in r for r in methods.values())]
    per_seed = max((r["n"] // len(r["seeds"]) for r in methods.values()), default=0)
    lines = [(f"Held-out accuracy over seeds {result['seeds']} ({per_seed} problems per seed, greedy): mean ± t 95% CI "
              "over seeds; pooled = all seeds' problems together (Wilson 95% CI); hard = d4 + d5 (mean over seeds; - "
              "where the task has none). Paired: "
              "held-out problems solved only by the method / only by the other, summed over the seeds both ran, exact "
              "McNemar p. Traces correct: the share of the method's sampled traces (its last round's) verified "
              "correct, q's with the hint or pi0's; q = hint: the share of q's traces whose answer is the reference "
              "answer; trace tokens: the mean length of those traces. Own stages: recorded wall time of every stage "
              "the method needs after pi0, shared ones included."), "",
             ("Compute (src/varreason/compute.py): the method's own stages, mean over seeds: tokens generated, read "
              "forward only (prompts, scoring), trained; FLOPs (2N per token read, 6N per token trained, plus "
              "attention); pi0's shared training is not included."), "",
             "| method | seeds | mean ± CI | hard | pooled [CI] | " + "".join(f"vs {a} | " for a in paired)
             + "traces correct | q = hint | trace tokens | generated | read forward | trained | FLOPs | own stages s |",
             "|---|---|---|---|---|" + "---|" * len(paired) + "---|---|---|---|---|---|---|---|"]
    for name, r in methods.items():
        c = r.get("compute")
        spent = (f"{_tokens(c['generated'])} | {_tokens(c['prefilled'] + c['scored'])} | {_tokens(c['trained'])} | "
                 f"{r['flops']:.2e}") if c else "- | - | - | -"
        hard = "-" if r["hard_mean"] != r["hard_mean"] else f"{r['hard_mean']:.1%}"  # NaN: no d4 / d5 problems
        tokens = f"{r['trace_tokens']:.1f}" if "trace_tokens" in r else "-"
        lines.append(f"| {name} | {len(r['seeds'])} | {r['mean']:.1%} ± {r['ci']:.1%} | {hard} | "
                     f"{r['pooled']:.1%} [{r['pooled_ci'][0]:.1%}, {r['pooled_ci'][1]:.1%}] | "
                     + "".join(f"{_pair(r, f'vs_{a}')} | " for a in paired)
                     + f"{_rate(r, 'traces_correct')} | {_rate(r, 'q_answer_equals_hint')} | {tokens} | "
                     f"{spent} | {sum(r['method_wall_seconds']) / len(r['method_wall_seconds']):.0f} |")
    levels = list(dict.fromkeys(d for r in methods.values() for d in r.get("by_difficulty", {})))
    if levels:
        lines += ["", "Held-out accuracy by difficulty (mean over seeds):", "",
                  "| method | " + " | ".join(f"d{d}" for d in levels) + " |", "|---|" + "---|" * len(levels)]
        lines += [f"| {n} | " + " | ".join(f"{r['by_difficulty'][d]:.1%}" if d in r.get("by_difficulty", {}) else "-"
                                          for d in levels) + " |" for n, r in methods.items()]
    weighted = [(n, r["weights"]) for n, r in methods.items() if "weights" in r]
    if weighted:
        lines += ["", ("The importance weights (last round, mean over seeds): K traces per question, mean ESS of the "
                       "self-normalised weights, mean within-question std of log rho, mean share of the heaviest "
                       "trace, share of questions with ESS < 2; pi0's mean probability of the reference answer after "
                       "a trace (GML's p(y* | x, z), no hint), over all traces and over the selected ones."), "",
                  "| method | K | ESS | std log rho | heaviest share | ESS < 2 | pi0 p(answer), traces | selected |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {w['k']:.1f} | {w['mean_ess']:.2f} | {w['log_rho_std']:.3f} | {w['max_share']:.2f} | "
                  f"{w['ess_below_2']:.1%} | {w['p_answer']:.3f} | {w['p_answer_best']:.3f} |" for n, w in weighted]
    chosen = [(n, r["selection"]) for n, r in methods.items() if "selection" in r]
    if chosen:
        levels = list(dict.fromkeys(d for _, sel in chosen for d in sel))
        lines += ["", ("Where the proposal helps, by training difficulty (last round, mean over seeds): traces "
                       "verified correct / questions with a correct trace among K / questions whose selected (best) "
                       "trace is correct. The proposal: q with the hint, or pi0 for no-hint."), "",
                  "| method | " + " | ".join(f"d{d}" for d in levels) + " |", "|---|" + "---|" * len(levels)]
        lines += [f"| {n} | " + " | ".join(
            f"{sel[d]['traces_correct']:.0%} / {sel[d]['solved']:.0%} / {sel[d]['best_correct']:.0%}" if d in sel
            else "-" for d in levels) + " |" for n, sel in chosen]
    lines += ["", "Per seed (overall accuracy):", ""]
    lines += [f"- {name}: " + ", ".join(f"seed {s} {a:.1%}" for s, a in zip(r["seeds"], r["accuracy"]))
              for name, r in result["methods"].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    methods = result["methods"]
    if not methods:
        return
    names = list(methods)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 3.8))
    for i, name in enumerate(names):
        r = methods[name]
        color = COLORS.get(r.get("proposal") or proposal(name), "tab:grey")
        ax.bar(i, r["mean"], yerr=r["ci"], capsize=3, color=color)
        ax.scatter([i] * len(r["accuracy"]), r["accuracy"], color="black", s=8, zorder=3)
    if "sft-matched" in methods:
        ax.axhline(methods["sft-matched"]["mean"], color="grey", linestyle="--", linewidth=1, label="sft-matched")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("mean over seeds, t 95% CI (dots: seeds); traces from: blue the teacher, green pi0, orange q (hint)",
                 fontsize=8)
    lows = [min(methods[n]["accuracy"]) for n in names]
    ax.set_ylim(max(0.0, min(lows) - 0.08), min(1.0, max(methods[n]["mean"] + methods[n]["ci"] for n in names) + 0.04))
    fig.tight_layout()
    fig.savefig(out / "study_accuracy.png", dpi=120)
    plt.close(fig)

    flops = [(n, r) for n, r in methods.items() if "flops" in r]
    if flops:  # accuracy against the FLOPs each method spent (pi0's training included)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name, r in flops:
            x = r["pi0_flops"] + r["flops"]
            # over seeds a t 95% CI; one seed: its Wilson 95% CI over the held-out problems
            err = [r["ci"]] if len(r["seeds"]) > 1 else [[r["mean"] - r["pooled_ci"][0]], [r["pooled_ci"][1] - r["mean"]]]
            ax.errorbar([x], [r["mean"]], yerr=err, marker="o", capsize=3,
                        color=COLORS.get(r.get("proposal") or proposal(name), "tab:grey"))
            ax.annotate(name, (x, r["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs: pi0's training + the method's own stages")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("traces from: blue the teacher, green pi0, orange q (hint); bars: 95% CI", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "study_flops.png", dpi=120)
        plt.close(fig)

    ks = [(k, methods[n]) for k, n in ((1, "k1"), (2, "k2"), (4, "k4"), (8, "variational")) if n in methods]
    if len(ks) > 1:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        ax.errorbar([k for k, _ in ks], [r["mean"] for _, r in ks], yerr=[r["ci"] for _, r in ks], marker="o",
                    capsize=3, label="variational (gml, best + mix)")
        if "sft-matched" in methods:
            ax.axhline(methods["sft-matched"]["mean"], color="grey", linestyle="--", linewidth=1, label="sft-matched")
        ax.set_xscale("log", base=2)
        ax.set_xticks([k for k, _ in ks], [str(k) for k, _ in ks])
        ax.set_xlabel("K: posterior traces per question")
        ax.set_ylabel("held-out accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "study_k.png", dpi=120)
        plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/study")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", default="core", choices=list(SETS))
    parser.add_argument("--aggregate-only", action="store_true", help="only summarise the runs already in ROOT")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    root = Path(args.root).resolve()
    for seed in [] if args.aggregate_only else args.seeds:
        print(f"seed {seed}: {run_seed(seed, root, args.set, args.config, extra):.0f} s", flush=True)
    result = aggregate(root, args.seeds)
    (root / "study.json").write_text(json.dumps(result, indent=2))
    text = write_markdown(result, root)
    (root / "study.md").write_text(text)
    plot(result, root / "plots")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
