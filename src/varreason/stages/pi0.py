"""data -> base -> initial: the problems, the starting model, and pi0 (SFT on the teacher traces).

    varreason data    --config demo --output-dir runs/demo
    varreason base    --config demo --output-dir runs/demo
    varreason initial --config demo --output-dir runs/demo

Each stage function reads artifacts of the run directory and writes one; `pipeline.py` decides what runs.
"""

from __future__ import annotations

from varreason.config import RunConfig
from varreason.errors import InputError
from varreason.models import build_tiny, convert_gguf, count_parameters, gguf_source, load_model, load_tokenizer
from varreason.runs import RunDir
from varreason.stages.common import base_model_path, check_hints, load_problems, sft_rows
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import train_sft

# --- data --------------------------------------------------------------------------------------------------------

def stage_data(cfg: RunConfig, run: RunDir) -> dict:
    """Train / test problems (question, answer, teacher trace, task, difficulty) as Parquet."""
    train, test = load_splits(cfg)
    run.write_rows("data/train.parquet", [p.to_row() for p in train])
    run.write_rows("data/test.parquet", [p.to_row() for p in test])
    return {"train": len(train), "test": len(test), "styles": _count(train, "style"),
            "difficulties": _count(train, "difficulty")}


_SPLITS: dict[str, tuple] = {}  # one load per process: `check_inputs` reads the data before the first stage


def load_splits(cfg: RunConfig) -> tuple[list[Problem], list[Problem]]:
    """The train and test problems of `task` (built-in, or the user's file, every row checked)."""
    import json

    from varreason import tasks

    key = json.dumps([cfg.seed, cfg.to_dict()["task"], cfg.posterior.hint], sort_keys=True)
    if key in _SPLITS:
        return _SPLITS[key]
    t = cfg.task
    if t.source == "builtin":
        train, test = tasks.build_splits(t.families, t.n_train, t.n_test, cfg.seed, t.difficulties, t.style_mix)
    else:
        columns = {"question_column": t.question_column, "trace_column": t.trace_column,
                   "answer_column": t.answer_column, "difficulty_column": t.difficulty_column,
                   "solution_column": t.solution_column}
        rows = tasks.load_user_problems(t.source, split=t.split, **columns)
        for p in rows:
            p.meta.setdefault("answer_kind", t.answer_kind)
        if t.test_source:
            train, test = rows, tasks.load_user_problems(t.test_source, split="test", **columns)
            for p in test:
                p.meta.setdefault("answer_kind", t.answer_kind)
        else:
            train, test = split_user_problems(rows, t.test_fraction, cfg.seed)
        train, test = train[: t.n_train], test[: t.n_test]
    check_hints(cfg, train, cfg.task.source, file_rows=True)  # before any artifact: the posterior would need a solution per problem
    _SPLITS.clear()
    _SPLITS[key] = (train, test)
    return train, test


def check_inputs(cfg: RunConfig, run: RunDir, stages: list[str]) -> None:
    """The input checks of the stages about to run (not those done already), before the first of them: the data
    (every row), the user's model and tokenizer, and the teacher rows against `initial.max_length` once a tokenizer
    exists (a tiny model's tokenizer is trained by `base`: then that check runs as `initial` starts)."""
    from varreason.models import is_gguf
    from varreason.training import tokenize_examples

    if not {"data", "base", "initial"} & set(stages):
        return
    if "data" in stages:
        train = load_splits(cfg)[0]
    else:
        train = load_problems(run, "train") if (run.path / "data/train.parquet").exists() else None
    user_model = cfg.model.name_or_path and not is_gguf(cfg.model.name_or_path)
    tokenizer = None
    if user_model and any(s in stages for s in ("base", "initial")):
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(cfg.model.name_or_path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load model ({str(exc).splitlines()[0][:200]})",
                             file=cfg.model.name_or_path) from None
        tokenizer = load_tokenizer(cfg.model.name_or_path)
    elif (run.path / "models/base/tokenizer.json").exists():
        tokenizer = load_tokenizer(run.path / "models/base")
    if tokenizer is not None and "initial" in stages and train is not None:
        tokenize_examples(sft_rows(train, Templates(cfg.format, tokenizer)), tokenizer, cfg.initial.max_length)


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
    problems = load_problems(run, "train")[: cfg.model.tokenizer_corpus_size]
    templates = Templates(cfg.format)
    corpus = []
    for p in problems:
        corpus.append(templates.prompt(p.question) + templates.completion(p.trace, p.answer, eos=False))
        for kind in ("A", "B"):
            corpus.append(templates.posterior_prompt(p.question, p.answer, kind))
    build_tiny(cfg.model, cfg.format, corpus, out, seed=cfg.seed)
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
