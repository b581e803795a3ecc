"""data -> base -> initial: the problems, the starting model, and pi0 (SFT on the teacher traces).

    varreason data    --config demo --output-dir runs/demo
    varreason base    --config demo --output-dir runs/demo
    varreason initial --config demo --output-dir runs/demo

Each stage function reads artifacts of the run directory and writes one; `pipeline.py` decides what runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from varreason.config import RunConfig
from varreason.errors import InputError, all_in_one
from varreason.models import count_parameters, load_model, load_tokenizer
from varreason.models.gguf import convert_gguf, gguf_source, gguf_tokenizer
from varreason.models.tiny import build_tiny, train_tokenizer
from varreason.runs import RunDir
from varreason.stages.common import (
    base_model_path,
    check_hints,
    hint,
    length_check_inputs,
    load_problems,
    reference_answer,
    sft_rows,
    trains_q,
)
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import train_sft

# --- data --------------------------------------------------------------------------------------------------------

def stage_data(cfg: RunConfig, run: RunDir) -> dict:
    """Train / test problems (question, answer, teacher trace, task, difficulty) as Parquet."""
    splits = load_splits(cfg)
    run.write_rows("data/train.parquet", [p.to_row() for p in splits.train])
    run.write_rows("data/test.parquet", [p.to_row() for p in splits.test])
    counts = {"train": len(splits.train), "test": len(splits.test), "styles": _count(splits.train, "style"),
              "difficulties": _count(splits.train, "difficulty")}
    if splits.overlap:
        counts["test_in_train"] = splits.overlap
        print(f"  warning: {splits.overlap} of {len(splits.test)} held-out questions are also training questions "
              "(task.allow_overlap: true)", file=sys.stderr)
    if cfg.task.long_rows == "drop":
        counts["dropped_long_rows"] = len(splits.dropped)
        if splits.dropped:
            places = "; ".join(e.place() or e.message for e in splits.dropped[:5])  # built-in: the id is in the message
            places += "; ..." if len(splits.dropped) > 5 else ""
            print(f"  dropped {len(splits.dropped)} training rows too long for training (task.long_rows: drop): "
                  f"{places}", file=sys.stderr)
    return counts


@dataclass
class Splits:
    """The data stage's problems, and what the checks on the way found (the data stage reports it)."""

    train: list[Problem]
    test: list[Problem]
    dropped: list[InputError] = field(default_factory=list)  # training rows left out as too long (task.long_rows)
    overlap: int = 0  # held-out questions that are also training questions (accepted by task.allow_overlap)


_SPLITS: dict[str, Splits] = {}  # one load per process: `check_inputs` reads the data before the first stage


def load_splits(cfg: RunConfig) -> Splits:
    """The train and test problems of `task` (built-in, or the user's data: every row checked, held-out questions
    that are training questions refused), cut to n_train / n_test, with `task.long_rows` applied to the training
    rows: all of this before the first stage runs (`check_inputs`), so a run never stops on its data midway."""
    import json

    from varreason import tasks

    key = json.dumps([cfg.seed, cfg.to_dict()["task"], length_check_inputs(cfg)], sort_keys=True)
    if key in _SPLITS:
        return _SPLITS[key]
    t = cfg.task
    overlap = 0
    if t.source == "builtin":  # disjoint by construction
        train, test = tasks.build_splits(t.families, t.n_train, t.n_test, cfg.seed, t.difficulties, t.style_mix)
    else:
        train, test = _user_splits(cfg)
        overlap = check_overlap(cfg, train, test)
    check_hints(cfg, train, cfg.task.source, file_rows=True)  # before any artifact: the posterior would need a solution per problem
    train, dropped = fit_lengths(cfg, train)
    _SPLITS.clear()
    _SPLITS[key] = Splits(train, test, dropped, overlap)
    return _SPLITS[key]


def _user_splits(cfg: RunConfig) -> tuple[list[Problem], list[Problem]]:
    from varreason import tasks

    t = cfg.task
    columns = {"question_column": t.question_column, "trace_column": t.trace_column,
               "answer_column": t.answer_column, "difficulty_column": t.difficulty_column,
               "solution_column": t.solution_column, "dataset_config": t.dataset_config}
    train = tasks.load_user_problems(t.source, split=t.split, **columns)
    if t.test_source:
        test = tasks.load_user_problems(t.test_source, split=t.test_split, held_out=True, **columns)
    else:
        train, test = split_user_problems(train, t.test_fraction, cfg.seed)
    for p in train + test:
        p.meta.setdefault("answer_kind", t.answer_kind)
    return train[: t.n_train], test[: t.n_test]


def _at(p: Problem, message: str) -> InputError:
    """`message` placed where the problem came from: the user's file and its 1-based line (record, row), also for
    problems read back from data/*.parquet (meta values are text there); a built-in problem by its id."""
    m = p.meta
    if "line" not in m:
        return InputError(f"problem {p.id}: {message}")
    return InputError(message, file=m.get("source"), line=int(m["line"]), unit=m.get("unit", "line"))


def check_overlap(cfg: RunConfig, train: list[Problem], test: list[Problem]) -> int:
    """Held-out questions that are also training questions: the same text once each run of whitespace is one space
    and the ends are stripped (case and punctuation count). Refused with the count and a few examples, or with
    `task.allow_overlap` counted (the data stage warns)."""
    def norm(text: str) -> str:
        return " ".join(text.split())

    seen = {norm(p.question) for p in train}
    both = [p for p in test if norm(p.question) in seen]
    if both and not cfg.task.allow_overlap:
        examples = "; ".join(f"{_at(p, repr(p.question[:60])).line()}" for p in both[:3])
        raise InputError(f"{len(both)} of {len(test)} held-out questions are also training questions (the same text "
                         f"up to whitespace), e.g. {examples}; remove them, or set task.allow_overlap: true to "
                         "evaluate on them anyway", field="task.test_source" if cfg.task.test_source else "question")
    return len(both)


def tokenizer_corpus(cfg: RunConfig, problems: list[Problem]) -> list[str]:
    """What the tiny model's tokenizer is trained on: the reasoning rows and both posterior prompts of the first
    `model.tokenizer_corpus_size` training problems."""
    templates = Templates(cfg.format)
    corpus = []
    for p in problems[: cfg.model.tokenizer_corpus_size]:
        corpus.append(templates.prompt(p.question) + templates.completion(p.trace, reference_answer(p), eos=False))
        for kind in ("A", "B"):
            corpus.append(templates.posterior_prompt(p.question, p.answer, kind))
    return corpus


def length_tokenizer(cfg: RunConfig, train: list[Problem]):
    """The tokenizer `initial` and `posterior` will train with, where it can be had before the first stage: the
    user's (an HF folder or hub id), the tiny model's trained here in memory as `base` will train it (0.7 s for the
    demo's 4000 problems), or a GGUF file's (read from the file, 5-14 s: for user data only). None for built-in
    problems on a GGUF model: their rows are short, and `initial` checks them against its tokenizer as it starts."""
    name = cfg.model.name_or_path
    if not name:
        return train_tokenizer(tokenizer_corpus(cfg, train), cfg.format, cfg.model.vocab_size)
    gguf = gguf_source(name)
    if gguf is None:
        return load_tokenizer(name)
    return None if cfg.task.source == "builtin" else gguf_tokenizer(gguf)


def too_long(cfg: RunConfig, problems: list[Problem], tokenizer) -> list[tuple[int, InputError]]:
    """The training rows over their length limit, as (index, error naming the row and the token counts): the SFT row
    (prompt + completion of `sft_rows`, tokenized apart as `training.tokenize_examples` does) over
    initial.max_length, or q's teacher row (its prompt with the hint, the same completion) over
    posterior.max_length when a posterior is trained."""
    templates = Templates(cfg.format, tokenizer)

    def tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    rows = sft_rows(problems, templates)
    completion = tokens([r["completion"] for r in rows])
    limits = [("initial", tokens([r["prompt"] for r in rows]), cfg.initial.max_length)]
    if trains_q(cfg):
        q_prompts = [templates.posterior_prompt(p.question, hint(cfg, p)) for p in problems]
        limits.append(("posterior", tokens(q_prompts), cfg.posterior.max_length))
    out = []
    for i, p in enumerate(problems):
        over = [f"{n[i] + completion[i]} tokens > {name}.max_length {limit}" for name, n, limit in limits
                if n[i] + completion[i] > limit]
        if over:
            out.append((i, _at(p, ", ".join(over))))
    return out


def fit_lengths(cfg: RunConfig, train: list[Problem]) -> tuple[list[Problem], list[InputError]]:
    """`task.long_rows` on the training rows: refuse lists every row too long (see `too_long`); drop leaves them
    out and returns them. The tiny model's tokenizer is trained on the rows kept, so after a drop it is trained
    again on them and the rows checked again, until none is too long: the tokenizer that decided is the one `base`
    builds."""
    kept, dropped = train, []
    tokenizer = length_tokenizer(cfg, train)
    while tokenizer is not None:
        long = too_long(cfg, kept, tokenizer)
        if not long:
            break
        errors = [e for _, e in long]
        if cfg.task.long_rows == "refuse":
            raise all_in_one(errors, errors[0].file, "training rows too long",
                             advice=" (task.long_rows: drop leaves such rows out)")
        gone = {i for i, _ in long}
        kept, dropped = [p for i, p in enumerate(kept) if i not in gone], dropped + errors
        if not kept:
            raise InputError(f"every training row is too long, e.g. {dropped[0].line()}", field="task.long_rows")
        tokenizer = length_tokenizer(cfg, kept) if not cfg.model.name_or_path else None
    return kept, dropped


def check_inputs(cfg: RunConfig, run: RunDir, stages: list[str]) -> None:
    """The input checks of the stages about to run (not those done already), before the first of them: the user's
    model, the data (`load_splits`: every row, the held-out overlap, `task.long_rows`), and, when the data was made
    by an earlier command, its rows against the length limits with the tokenizer there is now."""
    from varreason.models import is_gguf

    if not {"data", "base", "initial"} & set(stages):
        return
    user_model = cfg.model.name_or_path and not is_gguf(cfg.model.name_or_path)
    if user_model and any(s in stages for s in ("base", "initial")):
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(cfg.model.name_or_path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load model ({str(exc).splitlines()[0][:200]})",
                             file=cfg.model.name_or_path) from None
    if "data" in stages:
        load_splits(cfg)
        return
    if "initial" not in stages or not (run.path / "data/train.parquet").exists():
        return
    base = run.path / "models/base"
    tokenizer = load_tokenizer(cfg.model.name_or_path if user_model else base) if (
        user_model or (base / "tokenizer.json").exists()) else None
    long = [e for _, e in too_long(cfg, load_problems(run, "train"), tokenizer)] if tokenizer is not None else []
    if long:
        raise all_in_one(long, long[0].file, "training rows too long",
                         advice=" (the data was made with other lengths: `varreason data --force` applies "
                                "task.long_rows to it)")


def split_user_problems(problems: list[Problem], test_fraction: float, seed: int):
    """Seeded hash split of a user's file: a question is in train or in test, never both."""
    import hashlib

    def bucket(p: Problem) -> float:
        digest = hashlib.sha256(f"{seed}:{p.question}".encode()).hexdigest()
        return int(digest[:8], 16) / 0xFFFFFFFF

    train = [p for p in problems if bucket(p) >= test_fraction]
    test = [p for p in problems if bucket(p) < test_fraction]
    if not train or not test:
        raise InputError(f"too few problems ({len(problems)}) to hold out a test split", file="task.source")
    return train, test


def _count(problems, attr) -> dict:
    out: dict = {}
    for p in problems:
        out[str(getattr(p, attr))] = out.get(str(getattr(p, attr)), 0) + 1
    return dict(sorted(out.items()))


# --- models ------------------------------------------------------------------------------------------------------

def stage_base(cfg: RunConfig, run: RunDir) -> dict:
    """The starting model: the user's (a GGUF file is converted to an fp32 HF folder here), or a tiny Qwen3 +
    tokenizer trained here on the training split."""
    out = run.path / "models" / "base"
    gguf = gguf_source(cfg.model.name_or_path)
    if gguf is not None:
        convert_gguf(gguf, out)
        model = load_model(out)
        return {"source": str(gguf), "parameters": count_parameters(model), "vocab": model.config.vocab_size}
    if cfg.model.name_or_path:
        tok = load_tokenizer(cfg.model.name_or_path)  # fail early with a clear line when the path is wrong
        return {"source": cfg.model.name_or_path, "vocab": len(tok)}
    build_tiny(cfg.model, cfg.format, tokenizer_corpus(cfg, load_problems(run, "train")), out, seed=cfg.seed)
    model = load_model(out)
    return {"source": "tiny-from-scratch", "parameters": count_parameters(model),
            "vocab": model.config.vocab_size}


def stage_initial(cfg: RunConfig, run: RunDir) -> dict:
    """pi0: SFT of the base model on the teacher traces."""
    base = base_model_path(cfg, run)
    templates = Templates(cfg.format, load_tokenizer(base))
    rows = sft_rows(load_problems(run, "train"), templates)
    stats = train_sft(base, rows, cfg.initial, run.path / "models" / "initial", seed=cfg.seed,
                      log_dir=run.path / "logs" / "initial")
    return stats
