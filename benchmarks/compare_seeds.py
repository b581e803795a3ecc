"""`varreason compare` on the demo over several seeds: accuracy per method (mean and t 95% CI over seeds, pooled
Wilson CI), on hard problems (d4, d5), and wall time per method (mean over seeds).

    python benchmarks/compare_seeds.py --seeds 0 1 2 --root runs/compare [--reuse-root runs/seeds] [-- overrides]

Every seed is one `compare` folder ROOT/seed<s>. With --reuse-root, stages already finished in
REUSE_ROOT/seed<s> (same config) are adopted instead of rerun; their recorded wall times still count.
Results: ROOT/summary.json, ROOT/summary.md, ROOT/bias.md (the measured weight curves of every seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from variational_seeds import hard_accuracy, mean_ci

from varreason.eval.metrics import wilson_interval


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/compare")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--reuse-root", default=None)
    parser.add_argument("--aggregate-only", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [x for x in extra if x != "--"]
    root = Path(args.root)
    exe = str(Path(sys.executable).with_name("varreason"))
    for seed in [] if args.aggregate_only else args.seeds:
        cmd = [exe, "compare", "--config", args.config, "--output-dir", str(root / f"seed{seed}"), "--seed", str(seed)]
        reuse = Path(args.reuse_root or "", f"seed{seed}")
        if args.reuse_root and (reuse / "manifest.json").exists():
            cmd += ["--reuse", str(reuse)]
        print("+", " ".join(cmd + extra), flush=True)
        subprocess.run(cmd + extra, check=True)
    per_seed = {s: json.loads((root / f"seed{s}" / "summary.json").read_text()) for s in args.seeds
                if (root / f"seed{s}" / "summary.json").exists()}
    methods = list(next(iter(per_seed.values())))
    out, lines = {}, ["| method | seeds | " + " | ".join(f"seed {s}" for s in per_seed)
                      + " | mean ± t95 | pooled (Wilson 95%) | hard d4+d5 | wall s (method s) |",
                      "|---|---|" + "---|" * len(per_seed) + "---|---|---|---|"]
    for m in methods:
        entries = [per_seed[s][m] for s in per_seed if m in per_seed[s]]
        accs = [e["accuracy"] for e in entries]
        mean, half = mean_ci(accs)
        hits = sum(round(e["accuracy"] * e["n"]) for e in entries)
        n = sum(e["n"] for e in entries)
        lo, hi = wilson_interval(hits, n)
        hard = statistics.fmean(hard_accuracy(e) for e in entries)
        wall = statistics.fmean(e["wall_seconds"] for e in entries)
        own = statistics.fmean(e["method_wall_seconds"] for e in entries)
        out[m] = {"per_seed": accs, "mean": mean, "t95": half, "pooled": hits / n, "pooled_ci": [lo, hi],
                  "hard": hard, "wall_seconds": wall, "method_wall_seconds": own}
        cells = [f"{per_seed[s][m]['accuracy']:.1%}" if m in per_seed[s] else "-" for s in per_seed]
        lines.append(f"| {m} | {len(entries)} | " + " | ".join(cells)
                     + f" | {mean:.1%} ± {half:.1%} | {hits / n:.1%} [{lo:.1%}, {hi:.1%}] | {hard:.1%} | "
                     f"{wall:.0f} ({own:.0f}) |")
    (root / "summary.json").write_text(json.dumps(out, indent=2))
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    bias_lines = ["| seed | method | formula | fitted scale | rel. RMSE | mean weight by P |", "|---|---|---|---|---|---|"]
    for s in per_seed:
        path = root / f"seed{s}" / "bias.json"
        for m, c in (json.loads(path.read_text()) if path.exists() else {}).items():
            curve = ", ".join(f"{b['p']:.2f}:{b['mean_weight']:.2f}" for b in c["bins"])
            bias_lines.append(f"| {s} | {m} | {c['formula']} | {c['scale']:.3g} | {c['relative_rmse']:.3f} | {curve} |")
    (root / "bias.md").write_text("\n".join(bias_lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
