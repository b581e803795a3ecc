"""Flags that crashed or lied (issue 23, finding 4): each is refused up front with one line and exit status 2, before
any work, and nothing is written."""

import importlib.util
import json

import pytest

from varreason.cli import main
from varreason.config import load_config
from varreason.errors import InputError
from varreason.preflight import REPORT_TO, check_machine


def _run(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of `varreason ARGV` (argparse's refusals exit through SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _refused(argv, capsys, out, needle):
    code, err = _run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("varreason: error: ") and needle in lines[0], err
    assert "Traceback" not in err and not out.exists()  # refused before any work


@pytest.mark.parametrize(("flags", "needle"), [
    (["--n", "-3"], "--num-samples/--n: must be an integer >= 1, got '-3'"),
    (["--num-samples", "0"], "--num-samples/--n: must be an integer >= 1, got '0'"),
    (["--chunk-size", "0"], "--chunk-size: must be an integer >= 1"),
    (["--chunk-size", "-2"], "--chunk-size: must be an integer >= 1"),
    (["--limit", "0"], "--limit: must be an integer >= 1"),
    (["--limit", "-1"], "--limit: must be an integer >= 1"),
    (["--limit", "two"], "--limit: must be an integer >= 1"),
    (["--prompt-template", "no placeholder"], "must contain {question}"),
    (["--benchmark", "math5000"], "did you mean 'math500'?"),
])
def test_bad_eval_flags_are_one_line(flags, needle, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "ev"
    _refused(["eval", "--model", str(tiny_model_dir), "--benchmark", "arith", *flags, "--output-dir", str(out)],
             capsys, out, needle)


def test_bad_eval_flags_are_refused_without_model_too(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(["eval", "--config", "smoke", "--n", "0", "--output-dir", str(out)], capsys, out, "--num-samples/--n")


def test_data_with_a_builtin_benchmark_is_refused(tmp_path, tiny_model_dir, capsys):
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"question": "1+1=?", "answer": "2"}) + "\n")
    out = tmp_path / "ev"
    base = ["eval", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    _refused([*base, "--benchmark", "arith", "--data", str(mine)], capsys, out, "'arith' is generated here")
    _refused([*base, "--benchmark", "math500", "--benchmark", "aime24", "--data", str(mine)], capsys, out,
             "math500, aime24 would all read it")


@pytest.mark.parametrize(("override", "needle"), [
    (["--posterior.report_to", "[tensorbord]"], "unknown logger 'tensorbord' (did you mean 'tensorboard'?)"),
    (["--rft.report_to", "[none, tensorboard]"], "'none' and 'all' stand alone"),
])
def test_bad_report_to_is_one_line_before_any_stage(override, needle, tmp_path, capsys):
    out = tmp_path / "run"
    _refused(["run", "--config", "smoke", *override, "--output-dir", str(out)], capsys, out, needle)


def test_report_to_a_logger_not_installed_says_what_to_install(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    _refused(["run", "--config", "smoke", "--initial.report_to", "[wandb]", "--output-dir", str(out)], capsys, out,
             "'initial.report_to': logging to wandb needs the wandb package: pip install 'varreason[wandb]'")


@pytest.mark.parametrize("value", ["none", "[]", "[tensorboard]", "tensorboard", "all", "[all]"])
def test_good_report_to_values_pass(value):
    for section in ("initial", "posterior", "final", "rft", "grpo"):
        check_machine(load_config("smoke", [(f"{section}.report_to", value)]))


def test_report_to_table_matches_the_installed_transformers():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(REPORT_TO) == set(INTEGRATION_TO_CALLBACK)


def test_report_to_is_checked_in_every_section():
    for section in ("initial", "posterior", "final", "rft", "grpo"):
        with pytest.raises(InputError, match=f"'{section}.report_to': unknown logger"):
            check_machine(load_config("smoke", [(f"{section}.report_to", "[tensorbord]")]))
