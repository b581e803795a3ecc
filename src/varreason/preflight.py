"""The checks that ask the machine: run by the CLI after the config is loaded and before any stage.

`config.validate` judges a config by itself and reads nothing. Whether its output folder can be one, its GGUF file
is there, vLLM is installed and runs the model's head size here, and its loggers are installed depend on the machine
a command runs on; they are checked here, so that a bad answer is one line before any work, not a traceback after the
stages before it ran. `check_machine` is the one entry: `varreason` calls it for every command but `config`.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from pathlib import Path

from varreason.config import ENGINE_SECTIONS, REPORT_TO_SECTIONS, RunConfig
from varreason.errors import InputError, existing_ancestor
from varreason.models.gguf import gguf_source


def check_machine(cfg: RunConfig) -> RunConfig:
    """Everything a validated config needs from this machine, in the order a user would fix it; the config back."""
    nearest = existing_ancestor(cfg.output_dir)  # the nearest part that exists must be a folder
    if not nearest.is_dir():
        raise InputError(f"'{nearest}' is a file, not a folder", field="output_dir")
    gguf_source(cfg.model.name_or_path)  # a missing GGUF file or package: one line before any stage
    if any(cfg.backend_of(section) == "vllm" for section in ENGINE_SECTIONS):
        _require_vllm()
        head_dim, where = _head_dim(cfg)
        if head_dim is not None and head_dim not in VLLM_CPU_HEAD_SIZES and not _has_cuda():
            raise InputError(f"vLLM on a CPU runs attention heads of size {list(VLLM_CPU_HEAD_SIZES)} only; {where} "
                             f"has {head_dim} (backend hf runs it)", field="backend")
    check_report_to(cfg)
    check_attention(cfg)
    return cfg


# --- attention --------------------------------------------------------------------------------------------------------

# model.attn_implementation -> the package its kernels come from
FLASH_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn"), "flash_attention_3": ("flash_attn_interface",
                                                                                           "flash-attn-3")}


def check_attention(cfg: RunConfig) -> None:
    """`model.attn_implementation` can run here (flash-attention: its package and a GPU), and every `load_model` of
    this process then asks for it (`models.use_attention`)."""
    from varreason.models import use_attention

    name = cfg.model.attn_implementation
    if name in FLASH_PACKAGES:
        module, package = FLASH_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise InputError(f"'model.attn_implementation: {name}' needs the {package} package (pip install {package} "
                             "--no-build-isolation), or use sdpa", field="model.attn_implementation")
        if not _has_cuda():
            raise InputError(f"'model.attn_implementation: {name}' runs on NVIDIA GPUs only; this machine has none "
                             "(sdpa runs everywhere)", field="model.attn_implementation")
    use_attention(name)


# --- vLLM -------------------------------------------------------------------------------------------------------------

# vllm-cpu 0.32's CPU attention (`CPUAttentionBackend.get_supported_head_sizes`); another size fails at the first
# forward pass, after the stages before it have run.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise InputError("backend 'vllm' needs vLLM: pip install 'varreason[vllm]' (CPU: vllm-cpu) or "
                         "'varreason[gpu]' (CUDA: vllm); `make install` brings the CPU one", field="backend")


def _head_dim(cfg: RunConfig) -> tuple[int | None, str]:
    """The attention head size of the run's base model where it can be read before any work (the tiny model's
    config, a local HF folder's config.json), else None."""
    if cfg.model.name_or_path is None:
        return cfg.model.head_dim, "the tiny model (--model.head_dim; 32 runs)"
    path = Path(cfg.model.name_or_path) / "config.json"
    if not path.is_file():
        return None, ""
    try:
        config = json.loads(path.read_text())
        config = config.get("text_config", config)
        return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]), str(path.parent)
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None, ""  # not ours to judge here: loading the model reports it


def _has_cuda() -> bool:
    import torch  # only when a stage runs on vLLM: the CPU build runs fewer head sizes

    return torch.cuda.is_available()


# --- loggers ----------------------------------------------------------------------------------------------------------

# transformers' `report_to` integrations (INTEGRATION_TO_CALLBACK; tests/test_flags.py checks this table against the
# installed version): name -> (modules that must import, what to install). Checked here, not by importing
# transformers (seconds), so `none`, [] and `tensorboard` cost nothing.
REPORT_TO = {
    "azure_ml": (("azureml",), "azureml-core"), "clearml": (("clearml",), "clearml"),
    "codecarbon": (("codecarbon",), "codecarbon"), "comet_ml": (("comet_ml",), "comet-ml"),
    "dagshub": (("dagshub", "mlflow"), "dagshub mlflow"), "dvclive": (("dvclive",), "dvclive"),
    "flyte": (("flytekit",), "flytekit"), "kubeflow": ((), ""), "mlflow": (("mlflow",), "mlflow"),
    "neptune": (("neptune",), "neptune"), "swanlab": (("swanlab",), "swanlab"),
    "tensorboard": (("tensorboard",), "tensorboard"), "trackio": (("trackio",), "trackio"),
    "wandb": (("wandb",), "'varreason[wandb]'"),
}


def check_report_to(cfg: RunConfig) -> None:
    """Every `report_to` names loggers transformers knows and that are installed: a typo or a missing package is one
    line now, not a traceback when the Trainer starts (after the stages before it ran). `config.validate` has
    checked that 'none' and 'all' stand alone."""
    for section in REPORT_TO_SECTIONS:
        key, names = f"{section}.report_to", getattr(cfg, section).report_to
        for name in (n for n in names if n not in ("none", "all")):
            if name not in REPORT_TO and name not in _transformers_integrations():
                known = ["none", "all", *sorted(REPORT_TO)]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise InputError(f"'{key}': unknown logger {name!r}{hint}; known: {', '.join(known)}")
            modules, package = REPORT_TO.get(name, ((), ""))
            if name == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None:
                continue  # transformers takes either
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if missing:
                raise InputError(f"'{key}': logging to {name} needs the {missing[0]} package: pip install {package} "
                                 "(or report_to: [] for none)")
            if name == "kubeflow" and not os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"):
                raise InputError(f"'{key}': kubeflow reports to a Kubeflow TrainJob, which sets "
                                 "KUBEFLOW_TRAINER_SERVER_URL; it is not set here")


def _transformers_integrations() -> set[str]:
    """The installed transformers' `report_to` names: asked only for a name our table lacks (a newer version's)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return set(INTEGRATION_TO_CALLBACK)
