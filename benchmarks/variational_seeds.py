"""The demo over several seeds: pi0, sft-matched and the final model in four variants (gml / accuracy x best+mix /
weighted), held-out accuracy as mean and 95% CI over seeds, overall and on hard problems (d4, d5).

    python benchmarks/variational_seeds.py --seeds 0 1 2 --root runs/seeds [--config demo] [-- extra overrides]

Every seed is one run folder; variants after the first reuse its posterior, samples, scores and rollouts (the
pipeline skips finished stages) and retrain only weights -> build -> final. Rerunning resumes. Results go to
`ROOT/summary.json` and `ROOT/summary.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from varreason.eval.metrics import mcnemar_exact, wilson_interval

VARIANTS = {  # final.name -> overrides
    "final": [],  # the demo default: gml, best + mix
    "final-acc-mix": ["--weights.estimator", "accuracy"],
    "final-gml-weighted": ["--build.mode", "weighted", "--build.mix", "false"],
    "final-acc-weighted": ["--weights.estimator", "accuracy", "--build.mode", "weighted", "--build.mix", "false"],
}
HARD = ("4", "5")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run(cmd: list[str]) -> float:
    start = time.time()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.time() - start


def hard_accuracy(entry: dict) -> float:
    blocks = [entry["by_difficulty"][d] for d in HARD if d in entry["by_difficulty"]]
    n = sum(b["n"] for b in blocks)
    return sum(b["accuracy"] * b["n"] for b in blocks) / n if n else float("nan")


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a t 95% interval over seeds (0 for one seed); NaN and NaN when a seed has none
    (a task with no problems of that kind, e.g. no d4 / d5 for the "hard" column)."""
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def paired(root: Path, seeds: list[int], models: list[str], against: str = "sft-matched") -> dict:
    """Per model and seed: the held-out problems only it solved, only `against` solved, and the exact McNemar p."""
    import pyarrow.parquet as pq

    def correct(seed: int, model: str) -> dict:
        rows = pq.read_table(root / f"seed{seed}" / "eval" / model / "samples.parquet").to_pylist()
        return {(r["question_id"], r["k"]): bool(r["correct"]) for r in rows}

    out: dict = {}
    for model in models:
        for seed in seeds:
            a, b = correct(seed, model), correct(seed, against)
            only_first = sum(a[key] and not b[key] for key in a)
            only_second = sum(b[key] and not a[key] for key in a)
            out.setdefault(model, {})[seed] = {"only_first": only_first, "only_second": only_second,
                                               "p": mcnemar_exact(only_first, only_second)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/seeds")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--aggregate-only", action="store_true", help="only summarise the runs already in ROOT")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    root = Path(args.root)
    exe = [sys.executable, "-m", "varreason"]
    walls: dict = {}
    for seed in [] if args.aggregate_only else args.seeds:
        out = str(root / f"seed{seed}")
        for i, name in enumerate(args.variants):
            cmd = exe + ["run", "--config", args.config, "--output-dir", out, "--seed", str(seed),
                         "--final.name", name, "--rollout.num_generations", "4", "--rollout.prior_samples", "1"
                         ] + VARIANTS[name] + extra  # the rollouts these numbers were made with (the demo has none now)
            if i > 0:  # the variants share the folder's samples and scores; each replaces weights and training set
                cmd += ["--final.sft_matched", "false", "--overwrite"]  # sft-matched: only the init and the steps
            walls[(seed, name)] = run(cmd)

    table: dict = {}
    for seed in args.seeds:
        summary = json.loads((root / f"seed{seed}" / "eval" / "summary.json").read_text())
        for model, entry in summary.items():
            table.setdefault(model, {"overall": [], "hard": [], "seeds": [], "correct": 0, "n": 0})
            table[model]["correct"] += round(entry["accuracy"] * entry["n"])
            table[model]["n"] += entry["n"]
            table[model]["overall"].append(entry["accuracy"])
            table[model]["hard"].append(hard_accuracy(entry))
            table[model]["seeds"].append(seed)
    result = {}
    lines = [f"Held-out accuracy over seeds {args.seeds} (mean ± t 95% CI half-width; hard = d4 + d5)", "",
             "| model | overall | hard (d4+d5) | pooled over seeds (Wilson 95% CI) | per seed (overall) |",
             "|---|---|---|---|---|"]
    for model, v in table.items():
        (m, h), (hm, hh) = mean_ci(v["overall"]), mean_ci(v["hard"])
        result[model] = {"overall_mean": m, "overall_ci": h, "hard_mean": hm, "hard_ci": hh, **v}
        per_seed = " / ".join(f"{a:.1%}" for a in v["overall"])
        lo, hi = wilson_interval(v["correct"], v["n"])
        result[model].update(pooled_ci=[lo, hi])
        lines.append(f"| {model} | {m:.1%} ± {h:.1%} | {hm:.1%} ± {hh:.1%} | {v['correct'] / v['n']:.1%} "
                     f"[{lo:.1%}, {hi:.1%}] (n={v['n']}) | {per_seed} |")
    result["_paired"] = (paired(root, args.seeds, [m for m in table if m not in ("initial", "sft-matched")])
                         if "sft-matched" in table else {})
    lines += ["", "Paired on the same held-out problems (exact McNemar): solved only by the model / only by "
              + "sft-matched, p", ""]
    lines += [f"- {name}, seed {seed}: {v['only_first']} / {v['only_second']}, p = {v['p']:.2g}"
              for name, per_seed in result["_paired"].items() for seed, v in per_seed.items()]
    result["_wall_seconds"] = {f"seed{s}/{n}": w for (s, n), w in walls.items()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(result, indent=2))
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
