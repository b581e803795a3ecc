"""kill -9 at random moments of a run, then the same command again, many times: do the artifacts equal an
uninterrupted run's?

    python benchmarks/kill_resume.py --config smoke --kills 20          # minutes
    python benchmarks/kill_resume.py --config demo --kills 10           # hours: each resumed run finishes the demo
    python benchmarks/kill_resume.py --config smoke -- --rounds 2 --posterior.mode forward_kl   # config overrides

One uninterrupted reference run first (its wall time sets the window), then for each kill: a fresh folder, the run
started in a new process and SIGKILLed at a uniform random moment of the window (several kills per folder with
`--kills-per-run`), then rerun to the end and compared table by table (every Parquet artifact, row for row) and by
the held-out results (`eval/summary.json`). Writes `benchmarks/results/kill_resume_<config>.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, out: Path, kill_after: float | None = None, threads: int = 0,
        overrides: tuple[str, ...] = ()) -> tuple[bool, float]:
    """One `varreason run` in a new process; SIGKILL after `kill_after` s. (killed, wall seconds)."""
    start = time.time()
    command = [sys.executable, "-m", "varreason", "run", "--config", config, "--output-dir", str(out),
               "--num_threads", str(threads), *overrides]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True, time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed with exit {proc.returncode}: {out}")
    return False, time.time() - start


def stages_done(out: Path) -> list[str]:
    """The stages a killed folder had finished: the run's, then each later round's as `round<t>:<stage>`."""
    done = []
    rounds = sorted((out / "rounds").glob("*/manifest.json"), key=lambda m: int(m.parent.name))
    for manifest in [out / "manifest.json", *rounds]:
        if manifest.exists():
            prefix = "" if manifest.parent == out else f"round{manifest.parent.name}:"
            done += [prefix + stage for stage in json.loads(manifest.read_text())["stages"]]
    return done


def differences(out: Path, reference: Path) -> list[str]:
    diffs = []
    for ref in sorted(reference.rglob("*.parquet")):
        rel = ref.relative_to(reference)
        if any(part.startswith(".") or part.endswith(".work") for part in rel.parts):
            continue
        mine = out / rel
        if not mine.exists() or not pq.read_table(mine).equals(pq.read_table(ref)):
            diffs.append(str(rel))
    summary = "eval/summary.json"
    if json.loads((out / summary).read_text()) != json.loads((reference / summary).read_text()):
        diffs.append(summary)
    diffs += [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".shards-")]
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="smoke")
    ap.add_argument("--kills", type=int, default=20, help="kills in all")
    ap.add_argument("--kills-per-run", type=int, default=2, help="kills of the same folder before it may finish")
    ap.add_argument("--root", default="runs/kill_resume")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-threads", type=int, default=0,
                    help="torch threads of every run (0 = all cores); the reference runs with the same count, since "
                         "float sums, and so the artifacts, depend on it")
    ap.add_argument("--resume", action="store_true",
                    help="keep the folders of a stopped benchmark with the same settings (its results file) and go on")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, after `--`")
    args = ap.parse_args()
    overrides = tuple(args.overrides)
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", "".join([args.config, *(f"_{o.lstrip('-').replace('.', '-')}"
                                                                   for o in overrides)]))
    root = Path(args.root) / f"{name}-threads{args.num_threads}"
    reference = root / "reference"
    timing = root / "reference-wall-seconds.json"
    if not (reference / "eval/summary.json").exists() or not timing.exists():
        # the reference run, in a new process with imports, is also the window the kills are drawn from
        _, wall = run(args.config, reference, threads=args.num_threads, overrides=overrides)
        timing.write_text(json.dumps({"wall_seconds": wall}) + "\n")
    window = json.loads(timing.read_text())["wall_seconds"]
    path = ROOT / "benchmarks" / "results" / f"kill_resume_{name}.json"
    results, kills = [], 0
    if args.resume and path.exists():  # folders a stopped benchmark finished count; an unfinished one is redone
        previous = json.loads(path.read_text())
        if (previous["config"], previous.get("overrides", []), previous.get("num_threads"), previous.get("seed"),
                previous.get("kills_per_run")) == (args.config, list(overrides), args.num_threads, args.seed,
                                                   args.kills_per_run):
            results, kills = previous["runs"], previous["kills"]
    while kills < args.kills:
        out = root / f"killed-{len(results):03d}"
        if out.exists():
            shutil.rmtree(out)  # a folder the stopped benchmark did not finish
        rng = random.Random(f"{args.seed}:{len(results)}")  # the same moments whether or not the benchmark resumed
        moments = []
        for _ in range(min(args.kills_per_run, args.kills - kills)):
            after = rng.uniform(0.5, window)
            killed, _ = run(args.config, out, kill_after=after, threads=args.num_threads, overrides=overrides)
            if not killed:
                break
            kills += 1
            stages = stages_done(out)
            moments.append({"after_s": round(after, 2), "stages_done": stages})
        run(args.config, out, threads=args.num_threads, overrides=overrides)
        diffs = differences(out, reference)
        results.append({"folder": out.name, "kills": moments, "differences": diffs})
        print(f"{out.name}: killed at {[m['after_s'] for m in moments]} s -> {len(diffs)} differing artifacts",
              flush=True)
        report = {"config": args.config, "overrides": list(overrides), "num_threads": args.num_threads,
                  "seed": args.seed, "kills_per_run": args.kills_per_run,
                  "window_seconds": round(window, 1),
                  "kills": kills, "folders": len(results),
                  "differing_folders": sum(bool(r["differences"]) for r in results), "runs": results}
        path.write_text(json.dumps(report, indent=1) + "\n")  # after every folder: a stopped benchmark keeps its part
    print(f"{kills} kills over {len(results)} folders; {report['differing_folders']} folders differ; {path}")


if __name__ == "__main__":
    main()
