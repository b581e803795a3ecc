"""Sampling and scoring tokens/s on the hf backend, batched against one sequence at a time, in one run.

    python benchmarks/batching_throughput.py [--sequences 64] [--max-new-tokens 128] [--batch 64]

The demo's pi0 shape (hidden 128, 2 layers, head_dim 32; random weights, so every sequence runs to max_new_tokens
and both settings do the same work), prompts of the built-in task in the reasoning format, temperature 0.7. Scoring
scores the sampled completions (timed on a second pass: the first sets up kernels for the batch's shapes). Writes benchmarks/results/batching_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "batching_throughput.json"


def main() -> None:
    import torch
    from engine_throughput import prompts_for, tiny_model

    from varreason.backends.hf import HFEngine
    from varreason.models import load_model, load_tokenizer, set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--score-batch", type=int, default=None, help="scoring's batch size (default: --batch)")
    args = parser.parse_args()
    set_threads(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model(Path(tmp) / "tiny")
        model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
        prompts, stop = prompts_for(model_dir, args.sequences)
    rows = {}
    pairs = None
    for batch in (args.batch, 1):
        engine = HFEngine(model, tokenizer, batch_size=batch)
        scorer = HFEngine(model, tokenizer, batch_size=(args.score_batch or batch) if batch > 1 else 1)
        engine.generate(prompts[:2], max_new_tokens=4, progress=False)  # warm-up
        start = time.perf_counter()
        out = engine.generate(prompts, n=1, max_new_tokens=args.max_new_tokens, temperature=0.7, stop=stop,
                              progress=False)
        sample_s = time.perf_counter() - start
        generated = sum(len(row[0].token_ids) for row in out)
        if pairs is None:  # both settings score the same pairs
            ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
            pairs = [(ids[i], row[0].token_ids) for i, row in enumerate(out) if row[0].token_ids]
        scorer.score([p for p, _ in pairs], [c for _, c in pairs], progress=False)  # warm-up: one-time kernel set-up
        start = time.perf_counter()
        scorer.score([p for p, _ in pairs], [c for _, c in pairs], progress=False)
        score_s = time.perf_counter() - start
        scored = sum(len(c) for _, c in pairs)
        rows[batch] = {"batch_size": batch, "score_batch_size": scorer.batch_size, "generated_tokens": generated,
                       "sample_seconds": sample_s, "sample_tokens_per_s": generated / sample_s, "scored_tokens": scored,
                       "score_seconds": score_s, "score_tokens_per_s": scored / score_s}
        print(f"batch {batch:3d}: sampling {generated / sample_s:7.0f} tok/s, scoring {scored / score_s:7.0f} tok/s",
              flush=True)
    batched, single = rows[args.batch], rows[1]
    out = {"settings": vars(args), "threads": torch.get_num_threads(), "batched": batched, "one_at_a_time": single,
           "sample_speedup": batched["sample_tokens_per_s"] / single["sample_tokens_per_s"],
           "score_speedup": batched["score_tokens_per_s"] / single["score_tokens_per_s"]}
    print(f"batched / one at a time: sampling {out['sample_speedup']:.1f}x, scoring {out['score_speedup']:.1f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
