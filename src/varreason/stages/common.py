"""What several stages share: reading the run's problems and models, the teacher rows, the sampled question subset
and the final model's step count. Stage modules import from here, never from each other."""

from __future__ import annotations

import copy
import json
import random
from collections import defaultdict

from varreason.config import RunConfig, SFTConfig
from varreason.errors import InputError
from varreason.runs import RunDir, stable_seed
from varreason.tasks.base import Problem
from varreason.tasks.stratos import SCHEMA as STRATOS_SCHEMA
from varreason.templates import Templates


def load_problems(run: RunDir, split: str) -> list[Problem]:
    """The `data` stage's train or test problems."""
    rows = run.read_rows(f"data/{split}.parquet")
    return [Problem(**{**r, "meta": json.loads(r["meta"]) if isinstance(r["meta"], str) else (r["meta"] or {})})
            for r in rows]


def base_model_path(cfg: RunConfig, run: RunDir) -> str:
    """The user's model, or the tiny model the `base` stage built."""
    from varreason.models import is_gguf

    if cfg.model.name_or_path and not is_gguf(cfg.model.name_or_path):
        return cfg.model.name_or_path
    return str(run.path / "models" / "base")  # the tiny model built here, or the HF folder converted from GGUF


def model_dir(run: RunDir, name: str) -> str:
    """A finished model folder of the run (an ordinary one, or a LoRA adapter), or an InputError naming the stage to
    run first."""
    from varreason.models import is_model_folder

    path = run.path / "models" / name
    if not is_model_folder(path):
        raise InputError(f"model '{name}' is missing; run its stage first", file=str(path))
    return str(path)


def policy_dir(run: RunDir) -> str:
    """The reasoning model a stage samples from, scores under and continues from (`init: initial`): pi0
    (models/initial), or in round t >= 2 of Algorithm 1 the checkpoint the round was given (`RunDir.starts`)."""
    from varreason.models import is_model_folder

    start = run.starts.get("policy")
    if start is None:
        return model_dir(run, "initial")
    if not is_model_folder(start.path):
        raise InputError("the previous round's final model is missing; run the rounds in order", file=str(start.path))
    return str(start.path)


def init_path(cfg: RunConfig, run: RunDir, init: str) -> str:
    """Where a trained model starts: `base` (the paper's recipe) or `initial` (continue from the policy: pi0, or
    round t-1's final model in round t)."""
    return base_model_path(cfg, run) if init == "base" else policy_dir(run)


def posterior_init(cfg: RunConfig, run: RunDir) -> tuple[str, str]:
    """Where q starts, and its name for the manifest: round t-1's q in round t >= 2 (Algorithm 1 keeps phi),
    else `posterior.init`."""
    from varreason.models import is_model_folder

    start = run.starts.get("posterior")
    if start is not None and is_model_folder(start.path):
        return str(start.path), "previous-round-posterior"
    return init_path(cfg, run, cfg.posterior.init), cfg.posterior.init


def hint(cfg: RunConfig, p: Problem) -> str:
    """y' in q's prompt: the reference answer, or the reference solution (`posterior.hint: solution`)."""
    return str(p.answer) if cfg.posterior.hint == "answer" else p.meta["solution"]


def reference_answer(p: Problem) -> str:
    """y* in a completion's answer section, as the teacher writes it (trained on, and scored under -GML): the reference
    solution where the data's own answer section is one (Bespoke-Stratos rows: the released recipe trains on and scores
    `{think}<|end_of_thought|>...<|begin_of_solution|>{solution}<|end_of_solution|>`), else the reference answer.
    The verifier checks answers against `p.answer` either way (a Stratos solution's last `\\boxed{}`)."""
    return p.meta["solution"] if p.meta.get("schema") == STRATOS_SCHEMA else str(p.answer)


def check_hints(cfg: RunConfig, problems: list[Problem], source: str, file_rows: bool = False) -> None:
    """`posterior.hint: solution` needs a reference solution on every problem: one line naming the first without
    (`file_rows`: name the row of the user's file, not the index in `problems`)."""
    if cfg.posterior.hint != "solution" or cfg.sample.proposal == "prior":
        return
    for i, p in enumerate(problems):
        if not str(p.meta.get("solution") or "").strip():
            row = p.meta.get("row", i) if file_rows else i
            line = {"line": int(p.meta["line"]), "unit": p.meta.get("unit", "line")} if (
                file_rows and "line" in p.meta) else {}  # a user's file: its 1-based line (record, row)
            raise InputError("posterior.hint is 'solution' but this problem has no reference solution (the built-in "
                             "sum / product tasks and Bespoke-Stratos rows have one; user data: set "
                             "task.solution_column; a run folder whose data predates solutions: rerun `varreason "
                             "data --force`)", file=source, row=int(row), field="meta.solution", **line)


def teacher_row(templates: Templates, p: Problem, source: str = "teacher", prompt: str | None = None, **extra) -> dict:
    """A problem's teacher trace and reference answer as a training row (TRL's prompt / completion columns, weight 1):
    pi0's prompt, or `prompt` (q's, with the hint); `source` says why it is in the set (teacher, fallback, ...)."""
    return {"prompt": templates.prompt(p.question) if prompt is None else prompt,
            "completion": templates.completion(p.trace, reference_answer(p)), "weight": 1.0, "source": source, **extra}


def sft_rows(problems: list[Problem], templates: Templates) -> list[dict]:
    """Teacher data in TRL's prompt / completion columns, weight 1."""
    return [teacher_row(templates, p) for p in problems]


def group_rows(rows: list[dict], *keys: str) -> dict:
    """Rows grouped by one column (key: its value) or several (key: the tuple of values), in row order."""
    out: dict = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]].append(r)
    return out


def sampled_questions(cfg: RunConfig, run: RunDir) -> list[Problem]:
    """The training questions the posterior samples for: all, or a seeded subset (the paper's 1K setting)."""
    problems = load_problems(run, "train")
    n = cfg.sample.num_questions
    if n is None or n >= len(problems):
        return problems
    keep = set(random.Random(stable_seed("subset", cfg.seed)).sample(range(len(problems)), n))
    return [p for i, p in enumerate(problems) if i in keep]


def final_training_config(cfg: RunConfig, run: RunDir) -> SFTConfig:
    """cfg.final with max_steps resolved: -1 means as many optimiser steps as pi0 took."""
    sft = copy.deepcopy(cfg.final)
    if sft.max_steps is None or sft.max_steps < 0:
        stats = run.manifest()["stages"].get("initial", {}).get("counts", {})
        if not stats.get("optimizer_steps"):
            raise InputError("final.max_steps is -1 (match pi0) but pi0's step count is not in the manifest; "
                             "run `initial` first or set final.max_steps")
        sft.max_steps = int(stats["optimizer_steps"])
    return sft


def trains_q(cfg: RunConfig) -> bool:
    """Whether the run has a posterior q: it proposes the traces, or it rationalizes STaR's failed questions."""
    return cfg.sample.proposal != "prior" or cfg.star.rationalizer == "q"


def length_check_inputs(cfg: RunConfig) -> dict:
    """What decides which training rows are too long (`stages.pi0.too_long`): the tokenizer (model), the templates
    (format), the limits and q's hinted prompt when a q is trained. With `task.long_rows: drop` they are the data's
    settings too (`stages/graph.py`); `load_splits` keys its cache on them."""
    c = cfg.to_dict()
    return {"format": c["format"], "model": c["model"], "initial.max_length": cfg.initial.max_length,
            "posterior.max_length": cfg.posterior.max_length, "posterior.hint": cfg.posterior.hint,
            "sample.proposal": cfg.sample.proposal, "trains_q": trains_q(cfg)}
