"""The paper's recipes as presets (configs/paper/), the accelerate launcher files (configs/accelerate/), and the
Bespoke-Stratos-17k adapter (tasks/stratos.py), on a small fixture written in that data set's exact schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from varreason.cli import main
from varreason.config import load_config, preset_names, preset_path
from varreason.errors import InputError
from varreason.tasks import load_user_problems, score_problem
from varreason.templates import Templates

CONFIGS = Path(preset_path("demo")).parent
PAPER = sorted(p.stem for p in (CONFIGS / "paper").glob("*.yaml"))
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))
GPUS = 8  # the accelerate files' num_processes: effective batch = per device x accumulation x GPUS

SYSTEM = ("Your role as an assistant involves thoroughly exploring questions through a systematic long thinking "
          "process before providing the final precise and accurate solutions. ...")


def response(thought: str, solution: str) -> str:
    """An assistant turn exactly as Bespoke-Stratos-17k writes it."""
    return (f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n"
            f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>")


def row(question: str, thought: str, solution: str) -> dict:
    return {"system": SYSTEM, "conversations": [{"from": "user", "value": question},
                                                {"from": "assistant", "value": response(thought, solution)}]}


HALF = row("Return your final response within \\boxed{}. What is $\\frac{3}{6}$ in lowest terms?",
           "Okay, so I need to simplify 3/6.\n\nBoth are divisible by 3, so 3/6 = 1/2.\n\nWait, check: 1/2 = 0.5 and "
           "3/6 = 0.5. Yes.",
           "Dividing numerator and denominator by $\\gcd(3, 6) = 3$ gives\n\n\\[\n\\boxed{\\frac{1}{2}}\n\\]")
SUM = row("Return your final response within \\boxed{}. Find $x$ if $x - 2 = 40$; also give $x/2$.",
          "x - 2 = 40 so x = 42, and x/2 = 21.",
          "From $x - 2 = 40$ we get $\\boxed{x = 42}$ and then $x/2 = 21$, so the final answer is \\boxed{42}.")
CODE = row("Generate an executable Python function generated from the given prompt. Print the sum of two integers "
           "read from stdin.",
           "Read a line, split it, convert to int, print the sum.",
           "```python\ndef main():\n    a, b = map(int, input().split())\n    print(a + b)\n\nmain()\n```")
ROWS = [HALF, SUM, CODE]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def stratos_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "stratos.jsonl", ROWS)


# --- the adapter ---------------------------------------------------------------------------------------------------

def test_stratos_rows_parse_into_problems_with_trace_hint_and_answer(stratos_file):
    half, total, code = load_user_problems(stratos_file)
    assert half.question == HALF["conversations"][0]["value"]
    assert half.trace.startswith("Okay, so I need") and half.trace.endswith("Yes.")
    assert half.answer == "\\frac{1}{2}"  # nested braces of the last \boxed{...}
    assert half.meta["solution"].startswith("Dividing") and half.meta["solution"].endswith("\\]")  # the hint (App. G)
    assert half.meta["system"] == SYSTEM and half.meta["answer_kind"] == "math"
    assert total.answer == "42"  # the last box, not the first
    assert code.answer == code.meta["solution"] and code.meta["answer_kind"] == "none"  # code: no final answer
    for p in (half, total, code):
        assert p.task == "user" and p.style == "given" and p.difficulty == 0
        assert "<|" not in p.trace and "<|" not in p.meta["solution"]
        assert p.meta["row"] == ROWS.index(next(r for r in ROWS if r["conversations"][0]["value"] == p.question))
    assert [p.id for p in (half, total, code)] == ["user-0", "user-1", "user-2"]


def test_stratos_schema_is_detected_in_parquet_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "stratos.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    problems = load_user_problems(str(path))
    assert [p.answer for p in problems[:2]] == ["\\frac{1}{2}", "42"]
    assert problems[0].meta["solution"] == load_user_problems(write_jsonl(tmp_path / "s.jsonl", ROWS))[0].meta[
        "solution"]


def test_reference_answers_score_as_correct(stratos_file):
    half, total, code = load_user_problems(stratos_file)
    for p in (half, total):
        assert score_problem(p, p.answer).correct
        assert score_problem(p, p.meta["solution"]).correct  # a whole solution section, as the model writes it
    assert not score_problem(half, "\\frac{1}{3}").correct
    assert not score_problem(total, "41").correct
    verdict = score_problem(code, code.answer)  # no verifier for code: never counted correct
    assert not verdict.correct and verdict.reason == "unparseable_gold"


def test_preset_format_round_trips_a_stratos_answer(stratos_file):
    """The paper presets' markers rebuild the assistant turn from (trace, solution), and the cut rule splits it back."""
    cfg = load_config("paper/qwen3-4b")
    templates = Templates(cfg.format)
    for p, r in zip(load_user_problems(stratos_file), ROWS):
        text = cfg.format.think_open + templates.completion(p.trace, p.meta["solution"], eos=False)
        assert "".join(text.split()) == "".join(r["conversations"][1]["value"].split())  # the same but blank lines
        cut = templates.cut(templates.completion(p.trace, p.meta["solution"], eos=False))
        assert cut.format_ok and cut.trace == p.trace and cut.answer == p.meta["solution"]


def bad(question=None, assistant=None, **change) -> dict:
    r = json.loads(json.dumps(HALF))
    if question is not None:
        r["conversations"][0]["value"] = question
    if assistant is not None:
        r["conversations"][1]["value"] = assistant
    r.update(change)
    return r


DEFECTS = [
    (bad(conversations="What is 1/2?"), "conversations", "list of turns"),
    (bad(conversations=[HALF["conversations"][0]]), "conversations", "no assistant turn"),
    (bad(conversations=[HALF["conversations"][1]]), "conversations", "no user turn"),
    (bad(conversations=[HALF["conversations"][0], {"from": "assistant"}]), "conversations[1]", '"value"'),
    (bad(conversations=[{"from": "human", "value": "q"}, HALF["conversations"][1]]), "conversations[0].from", "user"),
    (bad(question="   "), "conversations[0].value", "empty"),
    (bad(assistant="The answer is \\boxed{\\frac{1}{2}}."), "conversations[1].value", "<|begin_of_thought|>"),
    (bad(assistant="<|begin_of_thought|>\n\nthink\n\n<|begin_of_solution|>\n\n\\boxed{1}\n\n<|end_of_solution|>"),
     "conversations[1].value", "<|end_of_thought|>"),
    (bad(assistant="<|begin_of_thought|>\n\nthink\n\n<|end_of_thought|>\n\n\\boxed{1}"),
     "conversations[1].value", "<|begin_of_solution|>"),
    (bad(assistant="<|begin_of_thought|>\n\nthink\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{1}"),
     "conversations[1].value", "<|end_of_solution|>"),
    (bad(assistant=response("  ", "\\boxed{1}")), "conversations[1].value", "empty thought"),
    (bad(assistant=response("think", "\\boxed{1}") + "\nP.S."), "conversations[1].value", "after"),
    (bad(assistant=response("think", "So it is one half.")), "conversations[1].value", "no \\boxed"),
    (bad(assistant=response("think", "So \\boxed{\\frac{1}{2}")), "conversations[1].value", "never closes"),
    (bad(assistant=response("think", "So \\boxed{ }")), "conversations[1].value", "empty \\boxed"),
    (bad(system=["not", "a", "string"]), "system", "string"),
]


@pytest.mark.parametrize(("record", "field", "says"), DEFECTS, ids=[f"{d[1]}:{d[2]}" for d in DEFECTS])
def test_a_defective_row_is_one_line_naming_file_row_and_field(tmp_path, record, field, says):
    path = write_jsonl(tmp_path / "bad.jsonl", [HALF, record])
    with pytest.raises(InputError) as err:
        load_user_problems(path)
    line = err.value.line()
    assert "\n" not in line and err.value.file == path and err.value.row == 1 and err.value.field == field
    assert says in line and line.startswith(f"{path}, line 2, field '{field}': ")  # 1-based file line


def test_a_row_without_the_conversations_column_is_named(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [HALF, {"system": SYSTEM, "messages": []}])
    with pytest.raises(InputError) as err:
        load_user_problems(path)
    assert (err.value.row, err.value.field) == (1, "conversations") and "missing column" in err.value.message


def test_question_answer_files_are_still_read_by_their_columns(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "1+1?", "trace": "1+1=2", "answer": 2,
                                                "conversations": "ignored: the question column wins"}])
    (p,) = load_user_problems(path)
    assert (p.question, p.trace, p.answer) == ("1+1?", "1+1=2", "2") and "solution" not in p.meta


# --- the presets ---------------------------------------------------------------------------------------------------

def test_paper_presets_are_listed_and_the_accelerate_files_are_not():
    names = preset_names()
    assert {"demo", "smoke"} <= set(names)
    assert {f"paper/{n}" for n in PAPER} <= set(names)
    assert {"paper/qwen3-4b", "paper/qwen3-8b", "paper/qwen2.5-7b-instruct", "paper/qwen2.5-7b-instruct-1k"} <= set(
        names)
    assert not [n for n in names if n.startswith("accelerate")]


def test_varreason_config_resolves_the_qwen3_4b_preset(capsys):
    assert main(["config", "--config", "paper/qwen3-4b"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["name_or_path"] == "Qwen/Qwen3-4B-Base"
    assert cfg["task"]["source"] == "bespokelabs/Bespoke-Stratos-17k"
    for section in ("initial", "posterior", "final"):
        assert cfg[section]["bf16"] is True and cfg[section]["gradient_checkpointing"] is True


def test_an_unknown_preset_is_one_line_listing_the_presets(capsys):
    assert main(["config", "--config", "paper/qwen3-40b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset 'paper/qwen3-40b'" in err[0] and "paper/qwen3-4b" in err[0]
    assert main(["config", "--config", "accelerate/ddp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "accelerate launch" in err[0] and "paper/qwen3-4b" in err[0]
    with pytest.raises(InputError, match="not a varreason config"):
        load_config(str(CONFIGS / "accelerate" / "ddp.yaml"))


def test_presets_load_by_file_path_too(tmp_path):
    assert load_config(str(CONFIGS / "paper" / "qwen3-8b.yaml")).model.name_or_path == "Qwen/Qwen3-8B-Base"
    assert load_config("paper/qwen3-8b.yaml").model.name_or_path == "Qwen/Qwen3-8B-Base"
    with pytest.raises(InputError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("name", PAPER)
def test_every_paper_preset_is_valid_yaml_and_loads(name):
    path = CONFIGS / "paper" / f"{name}.yaml"
    text = path.read_text()
    assert isinstance(yaml.safe_load(text), dict)
    assert text.startswith("#") and f"-m varreason run --config paper/{name}" in text  # the launch command
    cfg = load_config(f"paper/{name}")
    assert cfg.model.name_or_path.startswith("Qwen/") and cfg.task.source == "bespokelabs/Bespoke-Stratos-17k"
    for section in (cfg.initial, cfg.posterior, cfg.final):
        assert section.bf16 and section.gradient_checkpointing and section.normalizer == "constant"
        assert section.learning_rate == 1e-5 and section.lr_scheduler_type == "cosine" and section.max_grad_norm == 1.0
    batch = {s: getattr(cfg, s).per_device_train_batch_size * getattr(cfg, s).gradient_accumulation_steps * GPUS
             for s in ("initial", "posterior", "final")}
    assert (batch["initial"], cfg.initial.num_train_epochs, cfg.initial.warmup_ratio) == (96, 3, 0.1)  # App. C
    assert (cfg.initial.max_length, cfg.posterior.max_length, cfg.initial.weight_decay) == (16384, 16384, 0.0)
    assert (batch["posterior"], cfg.posterior.num_train_epochs, cfg.posterior.warmup_ratio) == (16, 10, 0.05)
    assert cfg.posterior.weight_decay == 1e-4 and cfg.posterior.init == "base" and cfg.final.init == "base"
    assert (cfg.sample.num_generations, cfg.sample.temperature, cfg.sample.top_p) == (8, 0.7, 1.0)
    assert cfg.sample.max_completion_length == 32764 and cfg.weights.max_trace_tokens == 28000
    assert (cfg.eval.temperature, cfg.eval.max_completion_length) == (0.7, 38912)
    if cfg.weights.estimator == "accuracy":
        assert (cfg.rollout.num_generations, cfg.rollout.temperature) == (8, 0.7)
    if name.endswith("-1k"):  # the 1K setting: 1,000 questions, all K traces weighted, no mix, batch 16 x K
        assert (cfg.sample.num_questions, cfg.build.mode, cfg.build.mix) == (1000, "weighted", False)
        assert batch["final"] == 16 and cfg.build.weighted_batch == "scaled"  # the final stage multiplies it by K
        assert cfg.final.max_length == 32768
        assert cfg.final.max_steps == 313 and cfg.final.weight_decay == 1e-4  # 5 epochs x 1,000 / 16
    else:  # the 17K setting: all questions, the best trace mixed 1:1, batch 192 for pi0's step count
        assert (cfg.sample.num_questions, cfg.build.mode, cfg.build.mix) == (None, "best", True)
        assert batch["final"] == 192 and cfg.final.max_steps == -1 and cfg.final.max_length == 16384


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_every_accelerate_file_is_a_valid_accelerate_config(path):
    from accelerate.commands.config.config_args import load_config_from_file

    assert isinstance(yaml.safe_load(path.read_text()), dict)
    assert "num_machines" in path.read_text().split("compute_environment")[0]  # the comment on 2 nodes x 8
    cfg = load_config_from_file(str(path))  # accelerate's own reader: unknown keys are an error there
    assert (cfg.num_processes, cfg.num_machines, cfg.mixed_precision) == (GPUS, 1, "bf16")
    assert cfg.distributed_type.value == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}[path.stem]
    if path.stem == "deepspeed_zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3


def test_the_three_accelerate_files_exist():
    assert [p.stem for p in ACCELERATE] == ["ddp", "deepspeed_zero3", "fsdp"]


def test_adam_beta2_of_the_paper_reaches_the_trainer_and_leaves_default_hashes_alone(tmp_path):
    from varreason.config import RunConfig, SFTConfig
    from varreason.training import _training_arguments

    cfg = load_config("paper/qwen3-4b")
    assert (cfg.initial.adam_beta2, cfg.posterior.adam_beta2, cfg.final.adam_beta2) == (0.999, 0.95, 0.999)
    assert _training_arguments(cfg.posterior, tmp_path, 0).adam_beta2 == 0.95
    assert _training_arguments(SFTConfig(), tmp_path, 0).adam_beta2 == 0.999
    default, changed = RunConfig(), RunConfig()
    changed.posterior.adam_beta2 = 0.95
    assert default.section_hash("posterior") != changed.section_hash("posterior")
    assert default.section_hash("initial") == changed.section_hash("initial")
