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


def test_cli_exit_status_2(capsys, tmp_path):
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
