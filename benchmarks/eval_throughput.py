"""Eval throughput: problems per second with batched generation vs one problem at a time, in one run.

    python benchmarks/eval_throughput.py [--model runs/demo/models/initial] [--problems 96]

Uses `varreason.eval.evaluator.evaluate_benchmark` on the built-in `arith` benchmark (greedy, n=1), so the numbers
include prompt rendering, generation, the cut rule and verification: what `varreason eval --model` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from varreason.config import EvalConfig
    from varreason.eval.evaluator import evaluate_benchmark
    from varreason.models import set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/models/initial")
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 16, 1])
    args = parser.parse_args()
    if not Path(args.model, "config.json").exists():
        raise SystemExit(f"no model at {args.model}: run `make run` first (or pass --model DIR)")
    set_threads(0)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports (reasoning-gym's scorer), first model load
        evaluate_benchmark(args.model, "arith", tmp, n=1, e=EvalConfig(max_completion_length=8), limit=2)
    rows = []
    for bs in args.batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            e = EvalConfig(temperature=0.0, max_completion_length=256, batch_size=bs)
            res = evaluate_benchmark(args.model, "arith", tmp, n=1, e=e, limit=args.problems, chunk_size=args.problems)
        rows.append({"batch_size": bs, "problems": args.problems, "seconds": res["wall_seconds"],
                     "problems_per_second": res["problems_per_second"],
                     "tokens_per_second": res["generated_tokens"] / res["wall_seconds"],
                     "avg@1": res["metrics"]["avg@n"]})
    base = next(r for r in rows if r["batch_size"] == min(args.batch_sizes))
    print("| batch size | problems/s | generated tokens/s | speed-up vs batch 1 | avg@1 |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        r["speedup"] = r["problems_per_second"] / base["problems_per_second"]
        print(f"| {r['batch_size']} | {r['problems_per_second']:.2f} | {r['tokens_per_second']:.0f} | "
              f"{r['speedup']:.1f}x | {r['avg@1']:.3f} |")
    out = Path(__file__).parent / "results" / "eval_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "machine": platform.machine(), "threads": os.cpu_count(),
                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
