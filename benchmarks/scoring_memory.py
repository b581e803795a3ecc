"""Peak memory and time of scoring one long completion: chunked (`HFScorer`) vs direct (full logits).

Scoring = per-token log p(completion_t | prompt, completion_<t). The direct way, `model(ids).logits` in fp32 then
`log_softmax` then gather, materialises two [tokens x vocab] float32 tensors: at 16k tokens x 150k vocab that is
2 x 9.8 GB. `HFScorer` runs the transformer body once and computes logits `chunk_size` positions at a time.

The model is a tiny Qwen3 (hidden 64, 2 layers) with a Qwen-sized vocabulary (150k), so the head dominates, as it
does for long sequences of real models. Each (length, variant) runs in its own subprocess; we read its peak RSS
(VmHWM, reset after the model is loaded and warmed up) and its RSS at that point (the baseline), and report both the
total peak and the increment over the baseline. A variant whose estimated need exceeds the available memory is
skipped; one that is killed is reported as "OOM/killed".

    python benchmarks/scoring_memory.py                       # what `make bench` runs (about 2-3 minutes)
    python benchmarks/scoring_memory.py --lengths 2048 4096   # a quicker subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scoring_memory.json"
PROMPT_TOKENS = 16
MB = 1024 * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


# ---------------------------------------------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> None:
    """One measurement: build the model, warm up, reset the peak, score once, print one JSON line."""
    try:  # if memory runs out, the kernel should kill this measurement, not someone else's process
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from varreason.backends.hf import HFScorer

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         intermediate_size=2 * args.hidden, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=args.hidden // 4, tie_word_embeddings=not args.untied,
                         max_position_embeddings=max(32768, args.length + PROMPT_TOKENS))
    model = Qwen3ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, args.vocab, (PROMPT_TOKENS,), generator=g).tolist()
    completion = torch.randint(0, args.vocab, (args.length,), generator=g).tolist()

    if args.variant == "direct":
        def run(p: list[int], c: list[int]) -> torch.Tensor:
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([p + c]), use_cache=False).logits[0].float()
                logp = torch.log_softmax(logits, dim=-1)
                return logp[torch.arange(len(p) - 1, len(p) + len(c) - 1), torch.tensor(c)]
    else:
        scorer = HFScorer(model, batch_size=1, chunk_size=args.chunk_size)

        def run(p: list[int], c: list[int]) -> torch.Tensor:
            return torch.tensor(scorer.score([p], [c], progress=False)[0])

    run(prompt, completion[:64])  # warm-up (kernels, the scorer's one-time head check) at a small size
    baseline_kb = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    logprobs = run(prompt, completion)
    seconds = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM")
    print(json.dumps({"peak_rss_mb": peak_kb / 1024, "baseline_rss_mb": baseline_kb / 1024,
                      "increment_mb": (peak_kb - baseline_kb) / 1024, "seconds": seconds, "peak_reset": reset,
                      "logprob_sum": float(logprobs.double().sum()), "n_tokens": int(logprobs.numel())}))


# --------------------------------------------------------------------------------------------------------------- parent


def _chunk_of(variant: str) -> int:
    return int(variant.split("-")[1]) if variant.startswith("chunked-") else 0


def estimate_mb(variant: str, length: int, args: argparse.Namespace) -> float:
    """Rough peak: the model, plus two fp32 [positions x vocab] tensors (direct: logits and log-probs)."""
    positions = length + PROMPT_TOKENS if variant == "direct" else min(length, _chunk_of(variant))
    model_mb = args.vocab * args.hidden * 4 * (2 if args.untied else 1) / MB
    return 600 + 2 * model_mb + 2 * positions * args.vocab * 4 / MB


def measure(variant: str, length: int, args: argparse.Namespace) -> dict:
    row = {"length": length, "variant": variant}
    need, available = estimate_mb(variant, length, args), _mem_available_mb()
    if need > 0.95 * available:
        return row | {"status": f"skipped: needs ~{need / 1024:.1f} GiB, {available / 1024:.1f} GiB available"}
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--length", str(length),
           "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--layers", str(args.layers),
           "--chunk-size", str(_chunk_of(variant))] + (["--untied"] if args.untied else [])
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return row | {"status": f"timeout after {args.timeout} s"}
    wall = time.perf_counter() - start
    if proc.returncode < 0 or proc.returncode == 137:
        return row | {"status": "OOM/killed", "returncode": proc.returncode}
    if proc.returncode != 0:
        return row | {"status": "error", "error": proc.stderr.strip().splitlines()[-1:]}
    return row | {"status": "ok", "process_wall_s": wall} | json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], variants: list[str]) -> str:
    lines = ["| completion tokens | variant | peak RSS (MB) | over baseline (MB) | scoring time (s) |",
             "|---:|---|---:|---:|---:|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['length']} | {r['variant']} | {r['peak_rss_mb']:.0f} | {r['increment_mb']:.0f} | "
                         f"{r['seconds']:.2f} |")
        else:
            lines.append(f"| {r['length']} | {r['variant']} | {r['status']} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--vocab", type=int, default=150_000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--untied", action="store_true", help="separate lm_head weights (default: tied)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per measurement")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct (full logits) variant")
    parser.add_argument("--output", type=Path, default=RESULTS)
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    variants = ([] if args.no_direct else ["direct"]) + [f"chunked-{c}" for c in args.chunk_sizes]
    rows = []
    for length in args.lengths:
        for variant in variants:
            row = measure(variant, length, args)
            rows.append(row)
            print(f"  {length:>6} {variant:<13} {row['status']}"
                  + (f"  peak {row['peak_rss_mb']:.0f} MB (+{row['increment_mb']:.0f}), {row['seconds']:.2f} s"
                     if row["status"] == "ok" else ""), file=sys.stderr, flush=True)

    # chunked and direct must agree (same model seed, same ids)
    for length in args.lengths:
        sums = {r["variant"]: r["logprob_sum"] for r in rows if r["length"] == length and r["status"] == "ok"}
        if len(sums) > 1:
            spread = max(sums.values()) - min(sums.values())
            for r in rows:
                if r["length"] == length and r["status"] == "ok":
                    r["logprob_sum_spread_across_variants"] = spread

    import torch
    import transformers

    args.output.parent.mkdir(parents=True, exist_ok=True)
    setup = {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "tied": not args.untied,
             "prompt_tokens": PROMPT_TOKENS, "dtype": "float32", "threads": os.cpu_count(),
             "mem_total_gib": round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1),
             "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "machine": platform.machine(), "processor": platform.processor()}
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"setup": setup, "results": rows}, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"Scoring one completion (+{PROMPT_TOKENS} prompt tokens), vocab {args.vocab}, hidden {args.hidden}, "
          f"{args.layers} layers, {'untied' if args.untied else 'tied'}, fp32, {os.cpu_count()} threads\n")
    print(markdown(rows, variants))
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
