"""STaR (Zelikman et al. 2022, `../shared/reference/related-methods.md` §1) as a method of `compare`:

    varreason compare --config demo --compare.methods "[star]"

pi0 proposes one near-greedy trace per training question (the `sample` stage with the star method's settings:
`sample.proposal: prior`, one sample, temperature 0); a question whose trace is verified correct keeps it. For each
question pi0 failed, a rationalizer writes a trace with the reference answer as a hint: `star.rationalizer: pi0` is
STaR's own choice (the same model, the hint appended to the question as STaR does: "question (answer)"), `q` our
posterior with its hinted prompt. A verified rationalization is kept with the hint removed: every training row has
pi0's plain prompt. The model is fine-tuned on the kept rows (`star.init: base` as STaR does each iteration; the demo
continues from pi0 as its other methods do). One iteration; `rounds` does not apply.
"""

from __future__ import annotations

import copy

from varreason import objectives
from varreason.backends import open_engine
from varreason.backends.sampling import sampling_work
from varreason.config import RunConfig
from varreason.errors import InputError
from varreason.models import load_tokenizer
from varreason.runs import RunDir
from varreason.stages.common import (
    final_training_config,
    group_rows,
    hint,
    init_path,
    load_problems,
    model_dir,
    teacher_row,
)
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import train_sft


def rationalize_prompt(cfg: RunConfig, templates: Templates, p: Problem) -> str:
    """The rationalizer's prompt: pi0's with the answer appended to the question (STaR), or q's hinted prompt."""
    if cfg.star.rationalizer == "pi0":
        return templates.prompt(f"{p.question} ({hint(cfg, p)})")
    return templates.posterior_prompt(p.question, hint(cfg, p))


def kept(rows: list[dict], require_finished: bool) -> list[bool]:
    """Which sampled traces STaR keeps: verified correct, a non-empty trace, and finished unless allowed otherwise."""
    return [bool(r["correct"]) and bool(str(r["trace"]).strip()) and (r["finished"] or not require_finished)
            for r in rows]


def rationalize(cfg: RunConfig, run: RunDir, rationalizer: str, problems: list[Problem]) -> list[dict]:
    """The rationalizer's traces for `problems` with the answer as a hint (the `sample` settings: the method's one
    near-greedy sample), verified, in resumable shards (star/<name>/rationalized.parquet)."""
    s, artifact = cfg.sample, f"star/{cfg.star.name}/rationalized.parquet"
    if not problems:  # pi0 solved every question: nothing to rationalize
        run.write_rows(artifact, [])
        return []

    def row(p: Problem, k: int, v) -> dict:
        return {"question_id": p.id, "k": k, "text": v.generation.text, "trace": v.cut.trace,
                "posterior_answer": v.cut.answer, "correct": v.correct, "finished": v.generation.finished}

    with open_engine(cfg.backend_of("sample"), rationalizer, batch_size=s.batch_size, vllm=cfg.vllm,
                     seed=cfg.seed) as engine:
        templates = Templates(cfg.format, engine.tokenizer)
        work = sampling_work(engine, templates, lambda p: rationalize_prompt(cfg, templates, p), row,
                             n=s.num_generations, settings=s, tag="star-rationalize", seed=cfg.seed)
        return run.sharded(f"star/{cfg.star.name}/rationalized", problems, s.chunk_size, work,
                           artifact=artifact, desc="STaR: rationalize")


def stage_star(cfg: RunConfig, run: RunDir) -> dict:
    """Rationalize the questions pi0 failed, keep every verified trace without the hint, fine-tune models/<star.name>
    on them (train/<star.name>.parquet; the rationalizations in star/<star.name>/rationalized.parquet)."""
    s = cfg.star
    if cfg.sample.proposal != "prior":
        raise InputError("star starts from pi0's own traces: run it with '--sample.proposal prior' (compare's star "
                         "method sets it)")
    problems = {p.id: p for p in load_problems(run, "train")}
    own = group_rows(run.read_rows("samples/posterior.parquet"), "question_id")
    failed = [problems[q] for q, group in own.items() if not any(kept(group, s.require_finished))]
    rationalizer = model_dir(run, "initial" if s.rationalizer == "pi0" else "posterior")
    templates = Templates(cfg.format, load_tokenizer(model_dir(run, "initial")))
    rationalized = rationalize(cfg, run, rationalizer, failed)
    by_question = group_rows(rationalized, "question_id")
    rows, counts = [], {"own": 0, "rationalized": 0, "none": 0}
    for qid, group in own.items():
        tried = by_question.get(qid, [])
        source, chosen = objectives.star_choice(kept(group, s.require_finished), kept(tried, s.require_finished))
        counts[source] += 1
        p, traces = problems[qid], (group if source == "own" else tried)
        for i in chosen:  # the verified answer as written after the trace, under pi0's plain prompt (no hint)
            rows.append({"prompt": templates.prompt(p.question),
                         "completion": templates.completion(traces[i]["trace"], traces[i]["posterior_answer"]),
                         "weight": 1.0, "source": f"star-{source}", "question_id": qid, "k": traces[i]["k"]})
    kept_rows = len(rows)
    if s.mix:
        rows += [teacher_row(templates, p, question_id=p.id, k=-1) for p in problems.values()]
    if not rows:
        raise InputError("STaR kept no trace: pi0 solved no question and no rationalization was right (sample more, "
                         "set star.mix true, or star.rationalizer q)")
    run.write_rows(f"train/{s.name}.parquet", rows)
    sft = copy.deepcopy(s)
    if sft.max_steps is None or sft.max_steps < 0:  # -1: the final model's optimiser steps (compute-matched)
        sft.max_steps = final_training_config(cfg, run).max_steps
    stats = train_sft(init_path(cfg, run, s.init), [{k: r[k] for k in ("prompt", "completion", "weight")} for r in rows],
                      sft, run.path / "models" / s.name, seed=cfg.seed, log_dir=run.path / "logs" / s.name)
    return {**stats, "questions": len(own), "solved_by_pi0": counts["own"], "rationalized": counts["rationalized"],
            "unsolved": counts["none"], "rationalizations_sampled": len(rationalized), "kept_traces": kept_rows,
            "rows": len(rows), "rationalizer": s.rationalizer, "init": s.init}
