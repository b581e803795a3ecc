"""Config: presets, overrides, one-line errors with exit status 2."""

import pytest

from varreason.cli import main, parse_overrides
from varreason.config import RunConfig, load_config
from varreason.errors import InputError


def test_presets_load():
    demo, smoke = load_config("demo"), load_config("smoke")
    assert demo.output_dir == "runs/demo" and smoke.task.n_train < demo.task.n_train


def test_overrides_typed():
    cfg = load_config("smoke", [("initial.learning_rate", "1e-4"), ("task.difficulties", "[1, 2]"),
                                ("model.name_or_path", "null"), ("initial.report_to", "tensorboard")])
    assert cfg.initial.learning_rate == 1e-4 and cfg.task.difficulties == [1, 2]
    assert cfg.model.name_or_path is None and cfg.initial.report_to == ["tensorboard"]


@pytest.mark.parametrize("key, value, message", [
    ("initial.lerning_rate", "1", "unknown config key 'initial.lerning_rate' (did you mean 'learning_rate'?)"),
    ("task.n_train", "many", "'task.n_train' must be an integer"),
    ("initial.normalizer", "mean", "'initial.normalizer' must be one of"),
    ("format.use_chat_template", "maybe", "must be true or false"),
])
def test_bad_override_is_one_line(key, value, message):
    with pytest.raises(InputError) as err:
        load_config("smoke", [(key, value)])
    assert message in err.value.line() and "\n" not in err.value.line()


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task:\n  n_trian: 3\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert str(path) in err.value.line() and "n_trian" in err.value.line()


def test_cli_exit_status_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/demo/config.yaml here to start from
    assert main(["config", "--task.n_train", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("varreason: error:")
    assert main(["data", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c=2", "d.e=3"]) == [("a.b", "1"), ("c", "2"), ("d.e", "3")]
    with pytest.raises(InputError):
        parse_overrides(["stray"])


def test_section_hash_changes_with_section_only():
    a, b = RunConfig(), RunConfig()
    b.eval.temperature = 0.5
    assert a.section_hash("task", "initial") == b.section_hash("task", "initial")
    assert a.section_hash("eval") != b.section_hash("eval")


def test_stage_hashes_of_hf_runs_are_those_of_before_the_backend_fields():
    """Hashes taken on cbaaa44 (before `backend` / `vllm` existed): finished hf stages of older runs are reused."""
    from varreason.pipeline import STAGES

    old = {"smoke": {"sample": "434c5c834e8fc2ab", "score": "c81a6fca0770fce8", "rollout": "c769eb4831215676",
                     "eval": "bf371ce66b1656a1", "final": "b166122dcf77e859"},
           "demo": {"sample": "99e3428090559d24", "score": "3f7e4ef991b7df6b", "rollout": "1feff399fd2b6970",
                    "eval": "467f1f5610d7dd56", "final": "041ace8fa4c45052"}}
    # the demo preset as it was then (issue 14 made it faithful and faster)
    then = {"smoke": [], "demo": [("sample.num_questions", "800"), ("sample.batch_size", "64"),
                                  ("sample.chunk_size", "128"), ("score.batch_size", "64"),
                                  ("rollout.batch_size", "512"), ("rollout.num_generations", "4"),
                                  ("rollout.prior_samples", "1")]  # (issue 23: the demo reads no rollouts)
            + [(f"{section}.padding_free", "false") for section in ("initial", "posterior", "final", "rft")]}
    for preset, hashes in old.items():
        cfg = load_config(preset, then[preset])
        assert {name: STAGES[name].config_hash(cfg) for name in hashes} == hashes
        cfg.vllm.gpu_memory_utilization, cfg.vllm.kv_cache_gib = 0.5, 8.0  # engine settings unused by hf stages
        cfg.sample.backend = "hf"  # the same engine, chosen per stage
        assert {name: STAGES[name].config_hash(cfg) for name in hashes} == hashes


def test_backend_is_hashed_where_it_samples_or_scores(monkeypatch):
    import importlib.util

    from varreason.pipeline import STAGES

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    hf = load_config("demo")
    run = load_config("demo", [("backend", "vllm")])
    only_score = load_config("demo", [("score.backend", "vllm")])
    assert run.backend_of("rollout") == "vllm" and only_score.backend_of("sample") == "hf"
    for name in ("sample", "score", "rollout", "weights", "final", "eval"):
        assert STAGES[name].config_hash(run) != STAGES[name].config_hash(hf)
    for name in ("initial", "posterior", "matched"):
        assert STAGES[name].config_hash(run) == STAGES[name].config_hash(hf)
    assert STAGES["sample"].config_hash(only_score) == STAGES["sample"].config_hash(hf)
    assert STAGES["score"].config_hash(only_score) not in (STAGES["score"].config_hash(hf), STAGES["score"].config_hash(run))
    assert STAGES["grpo"].config_hash(run) == STAGES["grpo"].config_hash(hf)  # TRL samples for GRPO, not the engine
    length = load_config("demo", [("backend", "vllm"), ("vllm.max_model_len", "512")])
    assert STAGES["sample"].config_hash(length) != STAGES["sample"].config_hash(run)  # completions stop there
    memory = load_config("demo", [("backend", "vllm"), ("vllm.gpu_memory_utilization", "0.3")])
    dtype = load_config("demo", [("backend", "vllm"), ("vllm.dtype", "bfloat16")])
    assert STAGES["sample"].config_hash(memory) == STAGES["sample"].config_hash(run)  # no output changes
    assert STAGES["sample"].config_hash(dtype) != STAGES["sample"].config_hash(run)


def test_vllm_backend_without_vllm_is_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--sample.backend", "vllm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "varreason[vllm]" in err[0] and "backend" in err[0]
    assert not out.exists()


def test_vllm_on_cpu_refuses_a_head_size_it_cannot_run(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["run", "--config", "smoke", "--output-dir", str(tmp_path / "r"), "--backend", "vllm",
                 "--model.head_dim", "16"]) == 2
    assert "head_dim" in capsys.readouterr().err
    assert load_config("smoke", [("backend", "vllm"), ("model.head_dim", "32")]).backend == "vllm"
    folder = tmp_path / "model"  # a local model folder is read too
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 64, "num_attention_heads": 4}')
    assert main(["run", "--config", "smoke", "--output-dir", str(tmp_path / "r2"), "--backend", "vllm",
                 "--model.name_or_path", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 16" in err[0] and not (tmp_path / "r2").exists()


def test_validate_asks_nothing_of_the_machine(monkeypatch, tmp_path):
    """A config is judged by itself; what the machine must have (an output folder that can be one, the GGUF file,
    vLLM, the loggers) is `preflight.check_machine`, which the CLI runs before any stage (tests above: one line)."""
    import importlib.util

    from varreason.preflight import check_machine

    real = importlib.util.find_spec
    missing = ("vllm", "wandb")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    (tmp_path / "afile").write_text("mine")
    for override, says in [(("output_dir", str(tmp_path / "afile" / "run")), "is a file, not a folder"),
                           (("model.name_or_path", str(tmp_path / "missing.gguf")), "no such GGUF file"),
                           (("backend", "vllm"), "needs vLLM"),
                           (("initial.report_to", "[wandb]"), "needs the wandb package")]:
        cfg = load_config("smoke", [override])
        with pytest.raises(InputError, match=says):
            check_machine(cfg)
    assert check_machine(load_config("smoke")).output_dir == load_config("smoke").output_dir


def test_vllm_under_torchrun_on_gpus_is_refused_before_any_stage(monkeypatch, tmp_path):
    import importlib.util

    from varreason.pipeline import run_all
    from varreason.runs import Ranks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    cfg = load_config("smoke", [("backend", "vllm"), ("model.head_dim", "32"), ("output_dir", str(tmp_path / "r"))])
    with pytest.raises(InputError, match="shard"):
        run_all(cfg, ranks=Ranks(0, 2, group=True))
    assert not (tmp_path / "r" / "manifest.json").exists()
