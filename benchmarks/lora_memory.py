"""Where the memory of a training step goes, full fine-tuning against LoRA (issue 29: LoRA's process peak was higher
than full fine-tuning's in training_throughput.py, 6.20 against 5.79 GiB on SmolLM2).

    python benchmarks/lora_memory.py --model smollm2 --out benchmarks/results/lora_memory_smollm2.json

Each variant runs in its own process, as training_throughput.py's `ours_lora` and `ours_grouped` (padded + length
grouping, batch 8, the same rows), and reports, from the OS (/proc/self/status) and from autograd:
- the resident memory after the model is loaded, and the peak of the whole process before training starts (the load);
- the peak during training alone (VmHWM reset at the first step through /proc/self/clear_refs);
- the bytes autograd saves for the backward pass in one step (saved_tensors_hooks; parameters and storages counted
  once), i.e. the activations, and the bytes of gradients and AdamW states after the step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 2**30


def status(field: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM) in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB
    raise KeyError(field)


def measure(variant: str, args) -> dict:
    import torch
    from training_throughput import build
    from transformers import TrainerCallback

    from varreason.config import LoraConfig, SFTConfig
    from varreason.training import train_sft

    folder = Path(args.work)
    model_dir, rows = build(args, folder)
    r = args.lora_r if variant == "lora" else 0
    out: dict = {"variant": variant, "lora_r": r, "rss_before_load_gib": status("VmRSS")}
    saved: dict = {"bytes": 0, "storages": set(), "params": set(), "counting": False}

    def pack(t):
        if saved["counting"]:
            key = t.untyped_storage().data_ptr()
            if key not in saved["storages"] and key not in saved["params"]:
                saved["storages"].add(key)
                saved["bytes"] += t.untyped_storage().nbytes()
        return t

    class Probe(TrainerCallback):
        def on_train_begin(self, a, state, control, model=None, **kw):
            out["rss_loaded_gib"] = status("VmRSS")
            out["peak_until_training_gib"] = status("VmHWM")
            saved["params"] = {p.untyped_storage().data_ptr() for p in model.parameters()}
            out["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on is training's

        def on_step_begin(self, a, state, control, **kw):
            saved["counting"] = state.global_step == 0  # the first step's forward
            saved["storages"].clear()

        def on_optimizer_step(self, a, state, control, model=None, optimizer=None, **kw):
            if state.global_step == 0:  # the first step: after its backward and AdamW update, before zero_grad
                out["saved_for_backward_gib"] = saved["bytes"] / GIB
                saved["counting"] = False
                inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
                states = [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v)]
                out["optimizer_state_gib"] = sum(v.numel() * v.element_size() for v in states) / GIB
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                out["gradients_gib"] = sum(g.numel() * g.element_size() for g in grads) / GIB
                out["rss_after_step1_gib"] = status("VmRSS")

    cfg = SFTConfig(learning_rate=1e-4, max_steps=args.steps, per_device_train_batch_size=args.batch, report_to=[],
                    logging_steps=10**6, save_steps=10**6, group_by_length=True, padding_free=False,
                    max_length=args.max_length, lora=LoraConfig(r=r, lora_alpha=2 * max(r, 1), save="adapter"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_sft(model_dir, rows, cfg, folder / f"out-{variant}", callbacks=[Probe()])
    out["peak_training_gib"] = status("VmHWM")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--work", default=None)
    parser.add_argument("--variant", choices=["full", "lora"], help="(internal) measure one variant in this process")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args)))
        return
    work = args.work or tempfile.mkdtemp(prefix="lora-memory-")
    results = {}
    for variant in ("full", "lora"):
        cmd = [sys.executable, __file__, "--variant", variant, "--work", work] + [
            a for k in ("model", "steps", "batch", "examples", "max_length", "lora_r", "hidden", "layers")
            for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
