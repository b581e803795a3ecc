"""`eval --model` on a run's own questions scores what the run's eval stage scored (issue 23, finding 3): no hidden
prompt (a file's question goes in as it is), the template explicit (`--help`, results.json) and changeable, and a
run's rows checked by their task's verifier."""

import json

import pyarrow.parquet as pq
import pytest

from varreason.backends.sampling import check_problem
from varreason.cli import main
from varreason.config import FormatConfig
from varreason.errors import InputError
from varreason.eval.benchmarks import QUESTION_PROMPT, SPECS, load_benchmark, score_sample
from varreason.eval.evaluator import evaluate_benchmark
from varreason.tasks import Problem
from varreason.templates import Templates

# a run small enough for a test whose pi0 has learned the reasoning format (so its answers depend on the prompt)
RUN = ["--config", "smoke", "--task.difficulties", "[1]", "--task.n_train", "600", "--task.n_test", "48",
       "--model.hidden_size", "64", "--model.num_hidden_layers", "2", "--model.intermediate_size", "128",
       "--model.tokenizer_corpus_size", "600", "--initial.max_steps", "150", "--initial.per_device_train_batch_size",
       "32", "--initial.learning_rate", "3e-3", "--initial.save_steps", "1000", "--initial.logging_steps", "50"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """data, base, initial and eval of a small run: pi0 and the run's own held-out evaluation of it."""
    out = tmp_path_factory.mktemp("run") / "r"
    for stage in ("data", "base", "initial", "eval"):
        assert main([stage, *RUN, "--output-dir", str(out)]) == 0
    return out


def _texts(path, key):
    return {r[key]: r["text"] for r in pq.read_table(path).to_pylist()}


@pytest.mark.slow
def test_eval_model_on_the_runs_test_file_scores_what_the_run_scored(trained_run, tmp_path):
    run_eval = json.loads((trained_run / "eval" / "summary.json").read_text())["initial"]
    run_texts = _texts(trained_run / "eval" / "initial" / "samples.parquet", "question_id")
    rows = pq.read_table(trained_run / "data" / "test.parquet").to_pylist()
    plain = tmp_path / "mine.jsonl"  # what a user writes from it: question and answer only
    plain.write_text("".join(json.dumps({"id": r["id"], "question": r["question"], "answer": r["answer"]}) + "\n"
                             for r in rows))
    out = tmp_path / "ev"
    model = str(trained_run / "models" / "initial")
    assert main(["eval", "--config", str(trained_run / "config.yaml"), "--model", model,
                 "--benchmark", str(trained_run / "data" / "test.parquet"), "--benchmark", str(plain),
                 "--output-dir", str(out)]) == 0
    for name, kind in (("test", "task"), ("mine", "integer")):
        res = json.loads((out / name / "results.json").read_text())
        assert res["answer_type"] == kind and res["prompt_template"] == "{question}"
        assert res["metrics"]["n_problems"] == run_eval["n"] == len(rows)
        assert res["metrics"]["avg@n"] == pytest.approx(run_eval["accuracy"])
        assert _texts(out / name / "samples.parquet", "problem_id") == run_texts  # the same prompts: the same texts


@pytest.mark.slow
def test_prompt_template_changes_the_prompt_and_is_recorded(trained_run, tmp_path):
    template = "Return your final response within \\boxed{{}}. {question}"  # the template local files used to get
    out = tmp_path / "ev"
    model = str(trained_run / "models" / "initial")
    assert main(["eval", "--config", str(trained_run / "config.yaml"), "--model", model,
                 "--benchmark", str(trained_run / "data" / "test.parquet"), "--prompt-template", template,
                 "--limit", "8", "--output-dir", str(out)]) == 0
    res = json.loads((out / "test" / "results.json").read_text())
    assert res["prompt_template"] == template and res["sampling"]["n"] == 1
    assert "Return your final response within \\boxed{}." in res["prompt_example"]
    run_texts = _texts(trained_run / "eval" / "initial" / "samples.parquet", "question_id")
    texts = _texts(out / "test" / "samples.parquet", "problem_id")
    assert len(texts) == 8 and any(texts[k] != run_texts[k] for k in texts)  # another prompt, other answers


def _run_rows(tmp_path):
    rows = [Problem("s0", "78+97=?", "175", "7+8=15 5\n175", "sum", 1, "careful", {"operands": "78,97"}).to_row(),
            Problem("p0", "53*4=?", "212", "53*4=212", "product", 1, "careful", {"operands": "53,4"}).to_row()]
    for r in rows:
        r["meta"] = json.dumps(r["meta"])  # as data/*.parquet keeps it
    path = tmp_path / "test.parquet"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, rows


def test_a_local_file_gets_its_question_as_it_is(tmp_path):
    path, _ = _run_rows(tmp_path)
    spec, _ = load_benchmark(str(path))
    assert spec.prompt_template == QUESTION_PROMPT and spec.answer_type == "task" and spec.default_n is None
    plain = tmp_path / "p.jsonl"
    plain.write_text(json.dumps({"question": "2+2=?", "answer": 4}) + "\n")
    spec, _ = load_benchmark(str(plain))
    assert spec.answer_type == "integer" and spec.prompt_template == "{question}"
    words = tmp_path / "w.jsonl"
    words.write_text(json.dumps({"question": "1/2 as a decimal?", "answer": "0.5"}) + "\n")
    assert load_benchmark(str(words))[0].prompt_template == "{question}"
    spec, _ = load_benchmark(str(path), prompt_template="Q: {question}")
    assert spec.prompt_template == "Q: {question}"


@pytest.mark.parametrize("completion", ["x</think><answer>175</answer>", "x</think><answer>+0175</answer>",
                                        "x</think><answer>1,75</answer>", "x</think><answer>175.0</answer>",
                                        "x</think><answer>the answer is 175</answer>", "175", "x</think>175",
                                        "x</think><answer>212</answer>", "x</think><answer></answer>"])
def test_a_runs_rows_are_checked_as_the_run_checks_them(tmp_path, completion):
    path, rows = _run_rows(tmp_path)
    spec, items = load_benchmark(str(path))
    templates = Templates(FormatConfig())
    cut = templates.cut(completion)
    for row, item in zip(rows, items):
        problem = Problem(**{**row, "meta": json.loads(row["meta"])})
        predicted, correct, reason = check_problem(problem, cut, completion)  # the eval stage's check
        got, verdict = score_sample(spec, item, completion, cut.answer)
        assert (got, verdict.correct, verdict.reason) == (predicted, correct, reason)


def test_a_runs_file_evaluates_like_the_run_with_a_canned_model(tmp_path, tiny_model_dir):
    from varreason.backends.base import Generation
    from varreason.models import load_tokenizer

    path, _ = _run_rows(tmp_path)
    seen = []

    class Canned:  # answers 175 to every prompt and keeps the prompts
        tokenizer = load_tokenizer(tiny_model_dir)

        def generate(self, prompts, n=1, **_):
            seen.extend(prompts)
            return [[Generation("x</think><answer>175</answer>", [1], True, "eos")] * n for _ in prompts]

    res = evaluate_benchmark("canned", str(path), tmp_path / "o", generator=Canned())
    assert res["metrics"]["avg@n"] == pytest.approx(0.5) and res["prompt_template"] == "{question}"
    assert seen == [Templates(FormatConfig(), Canned.tokenizer).prompt(q) for q in ("78+97=?", "53*4=?")]  # as is


def test_every_specs_template_is_in_eval_help(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "--prompt-template" in text
    for spec in SPECS.values():
        line = next(line for line in text.splitlines() if line.split()[:1] == [spec.name])
        assert spec.prompt_template.replace("\n", "\\n") in line


@pytest.mark.parametrize(("template", "kind", "message"), [
    ("hello", None, "must contain {question}"), ("{q}", None, "unknown placeholder {q}"),
    ("{question", None, "expected '}'"), ("{question} {choices}", "math", "multiple-choice"),
    ("{question}", "choice", "needs {choices}"), ("{question[0]}", None, "unknown placeholder")])
def test_bad_templates_are_one_line(template, kind, message):
    from varreason.eval.benchmarks import check_prompt_template

    with pytest.raises(InputError, match=message.replace("{", "\\{").replace("[", "\\[")):
        check_prompt_template(template, kind)


def test_data_with_a_benchmark_that_reads_none_is_refused(tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"question": "1+1=?", "answer": "2"}) + "\n")
    with pytest.raises(InputError, match="'arith' is generated here and reads no --data"):
        load_benchmark("arith", data=str(mine))
    with pytest.raises(InputError, match="is its own data"):
        load_benchmark(str(mine), data=str(mine))


def _fake_run(root, models=("initial",)):
    """The files that make a folder a run's: config.yaml, manifest.json, the held-out file and model folders (empty:
    only the paths are read)."""
    (root / "data").mkdir(parents=True)
    (root / "config.yaml").write_text("seed: 0\n")
    (root / "manifest.json").write_text("{}")
    (root / "data" / "test.parquet").write_text("")
    for name in models:
        (root / "models" / name).mkdir(parents=True)
    return root


def test_a_runs_model_defaults_to_the_runs_test_file_and_its_own_folder(tmp_path, monkeypatch):
    from varreason.cli import benchmark_defaults, model_run_folder

    monkeypatch.chdir(tmp_path)
    a = _fake_run(tmp_path / "runs" / "a")
    b = _fake_run(tmp_path / "runs" / "cmp" / "seed0" / "methods" / "b")
    (b / "rounds" / "2" / "models" / "final").mkdir(parents=True)
    assert model_run_folder("runs/a/models/initial/").resolve() == a
    assert model_run_folder(str(b / "rounds" / "2" / "models" / "final")).resolve() == b
    assert model_run_folder("Qwen/Qwen3-4B") is None and model_run_folder(str(tmp_path / "runs")) is None
    assert model_run_folder("runs/a/models/missing") is None  # not a folder: not a run's model
    # two runs' `initial` models: two folders (the old default, runs/eval/initial, refused the second)
    assert benchmark_defaults("runs/a/models/initial", [], None) == (["runs/a/data/test.parquet"],
                                                                      "runs/eval/a/initial")
    assert benchmark_defaults(str(b / "models" / "initial"), [], None)[1] == "runs/eval/cmp/seed0/methods/b/initial"
    assert benchmark_defaults(str(b / "rounds" / "2" / "models" / "final"), [], None)[1] == \
        "runs/eval/cmp/seed0/methods/b/rounds/2/final"
    assert benchmark_defaults("runs/a/models/initial", ["arith"], "mine") == (["arith"], "mine")  # given: kept
    assert benchmark_defaults("Qwen/Qwen3-4B", ["arith"], None) == (["arith"], "runs/eval/Qwen3-4B")
    # compare's shared models are links to another method's folder: named by the path given, not the link's target
    (b / "models" / "linked").symlink_to(a / "models" / "initial")
    assert benchmark_defaults(str(b / "models" / "linked"), [], None)[1] == "runs/eval/cmp/seed0/methods/b/linked"
    # a folder with a config.yaml but no manifest.json is not a run
    (tmp_path / "proj" / "models" / "m").mkdir(parents=True)
    (tmp_path / "proj" / "config.yaml").write_text("seed: 0\n")
    assert model_run_folder("proj/models/m") is None
    # a run whose parent folder is called `rounds`
    c = _fake_run(tmp_path / "rounds" / "c", models=("final",))
    assert model_run_folder("rounds/c/models/final").resolve() == c
    # runs outside the working directory: their whole path, so seed0/v and seed1/v do not share a folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    outs = {benchmark_defaults(str(b / "models" / "initial"), [], None)[1],
            benchmark_defaults(str(a / "models" / "initial"), [], None)[1]}
    assert len(outs) == 2 and all(o.startswith("runs/eval/") for o in outs)
    monkeypatch.chdir(a)  # inside the run folder: named by it
    assert benchmark_defaults("models/initial", [], None) == (["data/test.parquet"], "runs/eval/a/initial")
    with pytest.raises(InputError, match="needs at least one --benchmark"):
        benchmark_defaults("Qwen/Qwen3-4B", [], None)


@pytest.mark.slow
def test_eval_model_alone_on_a_runs_model_scores_what_the_run_scored(trained_run, tmp_path, monkeypatch):
    from varreason.cli import benchmark_defaults

    monkeypatch.chdir(tmp_path)  # no --config, --benchmark or --output-dir: the run's config, test file, own folder
    model = str(trained_run / "models" / "initial")
    assert main(["eval", "--model", model]) == 0
    out = benchmark_defaults(model, [], None)[1]  # the run is outside the working directory: its whole path
    assert out.startswith("runs/eval/") and out.endswith(f"{trained_run.name}/initial")
    res = json.loads((tmp_path / out / "test" / "results.json").read_text())
    run_eval = json.loads((trained_run / "eval" / "summary.json").read_text())["initial"]
    assert res["metrics"]["n_problems"] == run_eval["n"] and res["metrics"]["avg@n"] == pytest.approx(run_eval["accuracy"])


def test_a_refused_eval_of_a_runs_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a = _fake_run(tmp_path / "runs" / "a")
    assert main(["eval", "--model", str(a / "models" / "initial"), "--eval.temperature", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("varreason: error: ") and "temperature" in err[0], err
