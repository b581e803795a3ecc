"""Where the demo's time goes: a pi0 training step and a sampling batch, timed by phase and profiled by operator.

    python benchmarks/profile_demo.py [--run runs/demo] [--steps 40]

Needs a run folder with the data and pi0 (`make run`, or `varreason initial`). Training: batch 32 of the teacher data,
our loss on a plain loop (collate, forward, loss, backward, optimizer timed apart), for right-padded batches, packed
rows under transformers' sdpa (a block-diagonal mask) and packed rows under our per-example attention; then the
Trainer (`train_sft`) for the same steps, whose difference is the Trainer's own cost. Sampling: 128 training questions
x 8 traces at temperature 0.7 with the `</answer>` stop, by transformers' `generate` (left-padded batches, as
HFGenerator used to) and by HFGenerator's decode loop, at several batch sizes; plus the operator profile of each.
Run it alone: every figure is a time. Writes benchmarks/results/profile_demo.json; docs/performance.md reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "profile_demo.json"


def top_operators(prof, count: int = 8) -> list[dict]:
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:count]]


def sft_steps(model, opt, collator, features: list[dict], rng, steps: int, phases: dict | None = None):
    """`steps` steps of weighted SFT on random batches of 32; each phase's seconds added to `phases`. Returns the
    real (unpadded) and the fed tokens."""
    import torch

    from varreason.objectives import token_nll, weighted_sft_loss

    real = fed = 0
    for _ in range(steps):
        idx = rng.sample(range(len(features)), 32)
        t0 = time.perf_counter()
        batch = collator([features[i] for i in idx])
        t1 = time.perf_counter()
        labels = batch.pop("labels")
        weights = batch.pop("token_weight")[:, 1:] if "token_weight" in batch else batch.pop("weight")
        logits = model(**batch, use_cache=False).logits
        t2 = time.perf_counter()
        nll, mask = token_nll(logits, labels)
        loss = weighted_sft_loss(nll, mask, weights, 1000.0)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        t5 = time.perf_counter()
        if phases is not None:
            for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                phases[key] += dt
        real += sum(len(features[i]["input_ids"]) for i in idx)
        fed += batch["input_ids"].numel()
    return real, fed


def training_profile(run_dir: Path, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from varreason.config import load_config
    from varreason.models import load_model, load_tokenizer
    from varreason.models.attention import SDPA_GQA, VARLEN_SDPA
    from varreason.runs import RunDir
    from varreason.stages.common import load_problems, sft_rows
    from varreason.templates import Templates
    from varreason.training import PackedCollator, WeightedCollator, tokenize_examples

    cfg = load_config(run_dir / "config.yaml")
    base = run_dir / "models" / "base"
    tok = load_tokenizer(base)
    data = tokenize_examples(sft_rows(load_problems(RunDir(run_dir), "train"), Templates(cfg.format, tok)), tok, 1024)
    out = {}
    padded = WeightedCollator(tok.pad_token_id)
    for variant, collator, attention in (("padded, transformers sdpa", padded, "sdpa"),
                                         ("padded, grouped-query heads in the kernel", padded, SDPA_GQA),
                                         ("packed, transformers sdpa mask", PackedCollator(), "sdpa"),
                                         ("packed, per-example attention", PackedCollator(), VARLEN_SDPA)):
        model = load_model(base)
        model.set_attn_implementation(attention)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        rng = random.Random(0)
        phases = dict.fromkeys(("collate", "forward", "loss", "backward", "optimizer"), 0.0)
        sft_steps(model, opt, collator, data.features, rng, 3)
        real, fed = sft_steps(model, opt, collator, data.features, rng, steps, phases)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sft_steps(model, opt, collator, data.features, rng, 5)
        total = sum(phases.values())
        out[variant] = {"step_ms": round(1000 * total / steps, 1),
                        "phases_ms": {k: round(1000 * v / steps, 1) for k, v in phases.items()},
                        "tokens_per_step": round(fed / steps), "real_tokens_per_step": round(real / steps),
                        "real_tokens_per_s": round(real / total), "top_operators": top_operators(prof)}
        print(variant, out[variant]["step_ms"], "ms/step", out[variant]["phases_ms"], flush=True)
    return out


def trainer_profile(run_dir: Path, steps: int) -> dict:
    from varreason.config import SFTConfig, load_config
    from varreason.models import load_tokenizer
    from varreason.runs import RunDir
    from varreason.stages.common import load_problems, sft_rows
    from varreason.templates import Templates
    from varreason.training import train_sft

    cfg = load_config(run_dir / "config.yaml")
    base = run_dir / "models" / "base"
    rows = sft_rows(load_problems(RunDir(run_dir), "train"), Templates(cfg.format, load_tokenizer(base)))
    out = {}
    for packed in (False, True):
        sft = SFTConfig(max_steps=steps, per_device_train_batch_size=32, learning_rate=2e-3, report_to=[],
                        logging_steps=10, save_steps=10**6, group_by_length=False, padding_free=packed)
        with tempfile.TemporaryDirectory() as tmp:
            stats = train_sft(base, rows, sft, Path(tmp) / "m", seed=0)
        key = "padding_free" if packed else "padded"
        out[key] = {"steps": steps, "step_ms": round(1000 * stats["wall_seconds"] / steps, 1)}
        print("Trainer", key, out[key], flush=True)
    return out


def generate_batches(model, tokenizer, prompts: list[str], n: int, batch_size: int, stop: list[str]) -> int:
    """transformers' `generate` as HFGenerator called it before its own loop: prompts repeated n times, sorted by
    length, left-padded batches, stop strings, top_k off. Returns the useful tokens (up to eos or the stop string)."""
    import torch
    from transformers import GenerationConfig

    from varreason.backends.base import apply_stop_strings, exact_decoder

    decode = exact_decoder(tokenizer)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(n)]
    ids.sort(key=len, reverse=True)
    config = GenerationConfig(max_new_tokens=256, do_sample=True, temperature=0.7, top_k=0, stop_strings=stop,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    useful = 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in batch])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in batch])
        with torch.inference_mode():
            new = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                 tokenizer=tokenizer)[:, width:].tolist()
        for row in new:
            eos = tokenizer.eos_token_id in row
            tokens = row[: row.index(tokenizer.eos_token_id)] if eos else row
            useful += len(apply_stop_strings(decode, tokens, "eos" if eos else "length", stop).token_ids)
    return useful


def sampling_profile(run_dir: Path, questions: int, batch_sizes: list[int]) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from varreason.backends.hf import HFGenerator
    from varreason.config import load_config
    from varreason.models import load_model, load_tokenizer
    from varreason.models.attention import SDPA_GQA
    from varreason.runs import RunDir
    from varreason.stages.common import load_problems
    from varreason.templates import Templates

    cfg = load_config(run_dir / "config.yaml")
    pi0 = run_dir / "models" / "initial"
    tok, model = load_tokenizer(pi0), load_model(pi0)
    prompts = [Templates(cfg.format, tok).prompt(p.question) for p in load_problems(RunDir(run_dir), "train")]
    prompts, stop, n = prompts[:questions], [cfg.format.answer_close], 8
    out: dict = {"sequences": questions * n, "runs": []}

    def useful_tokens(engine: str, batch_size: int) -> int:
        if engine == "generate":
            return generate_batches(model, tok, prompts, n, batch_size, stop)
        rows = HFGenerator(model, tok, batch_size).generate(prompts, n=n, max_new_tokens=256, temperature=0.7,
                                                            stop=stop, progress=False)
        return sum(len(g.token_ids) for row in rows for g in row)

    def timed(engine: str, attention: str, batch_size: int, profiled: bool = False) -> None:
        model.set_attn_implementation(attention)
        start = time.perf_counter()
        useful = useful_tokens(engine, batch_size)
        seconds = time.perf_counter() - start
        entry = {"engine": engine, "attention": attention, "batch_size": batch_size, "seconds": round(seconds, 2),
                 "useful_tokens_per_s": round(useful / seconds)}
        if profiled:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                useful_tokens(engine, batch_size)
            entry["top_operators"] = top_operators(prof)
        out["runs"].append(entry)
        print(engine, attention, batch_size, entry["seconds"], "s", entry["useful_tokens_per_s"], "tok/s", flush=True)

    HFGenerator(model, tok, 64).generate(prompts[:4], max_new_tokens=8, progress=False)  # warm-up
    timed("generate", "sdpa", 64)
    timed("generate", "sdpa", 512, profiled=True)
    timed("generate", SDPA_GQA, 512, profiled=True)
    for batch_size in batch_sizes:
        timed("ours", SDPA_GQA, batch_size, profiled=batch_size == max(batch_sizes))
    return out


def main() -> None:
    from varreason.models import set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="a run folder with data/ and models/initial")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--questions", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    set_threads(0)
    run_dir = Path(args.run)
    results = {"run": str(run_dir), "training_step": training_profile(run_dir, args.steps),
               "trainer": trainer_profile(run_dir, 200),
               "sampling": sampling_profile(run_dir, args.questions, args.batch_sizes)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
