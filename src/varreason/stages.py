"""One function per stage: inputs are artifacts of the run directory, output is one artifact.

Each stage returns the counts it wants in the manifest; `pipeline.py` decides what to run and records it.
"""

from __future__ import annotations

import json
import time

from varreason.config import RunConfig
from varreason.errors import InputError
from varreason.evaluation import summarize
from varreason.models import build_tiny, count_parameters, load_model, load_tokenizer
from varreason.runs import RunDir
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import train_sft

# --- data --------------------------------------------------------------------------------------------------------

def stage_data(cfg: RunConfig, run: RunDir) -> dict:
    """Train / test problems (question, answer, teacher trace, task, difficulty) as Parquet."""
    from varreason import tasks

    t = cfg.task
    if t.source == "builtin":
        train, test = tasks.build_splits(t.families, t.n_train, t.n_test, cfg.seed, t.difficulties, t.style_mix)
    else:
        columns = {"question_column": t.question_column, "trace_column": t.trace_column,
                   "answer_column": t.answer_column, "difficulty_column": t.difficulty_column}
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
    run.write_rows("data/train.parquet", [p.to_row() for p in train])
    run.write_rows("data/test.parquet", [p.to_row() for p in test])
    return {"train": len(train), "test": len(test), "styles": _count(train, "style"),
            "difficulties": _count(train, "difficulty")}


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


def load_problems(run: RunDir, split: str) -> list[Problem]:
    rows = run.read_rows(f"data/{split}.parquet")
    return [Problem(**{**r, "meta": json.loads(r["meta"]) if isinstance(r["meta"], str) else (r["meta"] or {})})
            for r in rows]


# --- models ------------------------------------------------------------------------------------------------------

def stage_base(cfg: RunConfig, run: RunDir) -> dict:
    """The starting model: the user's, or a tiny Qwen3 + tokenizer trained here on the training split."""
    out = run.path / "models" / "base"
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


def base_model_path(cfg: RunConfig, run: RunDir) -> str:
    return cfg.model.name_or_path or str(run.path / "models" / "base")


def sft_rows(problems: list[Problem], templates: Templates) -> list[dict]:
    """Teacher data in TRL's prompt / completion columns, weight 1."""
    return [{"prompt": templates.prompt(p.question), "completion": templates.completion(p.trace, p.answer),
             "weight": 1.0, "source": "teacher"} for p in problems]


def stage_initial(cfg: RunConfig, run: RunDir) -> dict:
    """pi0: SFT of the base model on the teacher traces."""
    base = base_model_path(cfg, run)
    templates = Templates(cfg.format, load_tokenizer(base))
    rows = sft_rows(load_problems(run, "train"), templates)
    stats = train_sft(base, rows, cfg.initial, run.path / "models" / "initial", seed=cfg.seed,
                      log_dir=run.path / "logs" / "initial")
    return stats


# --- evaluation ----------------------------------------------------------------------------------------------------

REASONING_MODELS_FIRST = ("initial", "final", "sft-matched")
NOT_REASONING_MODELS = ("base", "posterior")


def reasoning_models(run: RunDir) -> list[str]:
    """Every finished model of the run that answers without a hint: pi0, the final model(s), baselines."""
    folder = run.path / "models"
    names = [d.name for d in folder.iterdir() if d.is_dir() and not d.name.endswith(".work")
             and d.name not in NOT_REASONING_MODELS and (d / "config.json").exists()] if folder.exists() else []
    order = {n: i for i, n in enumerate(REASONING_MODELS_FIRST)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def _fingerprint(cfg: RunConfig, model_dir) -> str:
    """Identifies (model weights, eval settings, test set): an evaluation is redone only when one of them changed."""
    import hashlib

    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    payload = json.dumps([stamp, cfg.section_hash("seed", "task", "format", "eval")])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stage_eval(cfg: RunConfig, run: RunDir) -> dict:
    """Held-out accuracy of every reasoning model of the run (skipping those already evaluated as they are)."""
    out = {}
    for name in reasoning_models(run):
        metrics_path = run.path / "eval" / name / "metrics.json"
        fingerprint = _fingerprint(cfg, run.path / "models" / name)
        previous = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        if previous.get("fingerprint") == fingerprint:
            out[name] = previous["accuracy"]
            continue
        out[name] = evaluate_model(cfg, run, name, fingerprint)["accuracy"]
    return {"accuracy": out}


def evaluate_model(cfg: RunConfig, run: RunDir, model_name: str, fingerprint: str = "") -> dict:
    """Held-out accuracy of one model of the run: samples with verdicts, metrics JSON, summary entry."""
    from varreason.backends.hf import HFGenerator
    from varreason.tasks import score_problem

    model_dir = run.path / "models" / model_name
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    templates = Templates(cfg.format, tokenizer)
    problems = load_problems(run, "test")
    e = cfg.eval
    generator = HFGenerator(model, tokenizer, batch_size=e.batch_size)
    start = time.time()
    outputs = generator.generate(
        [templates.prompt(p.question) for p in problems], n=e.num_generations, max_new_tokens=e.max_completion_length,
        temperature=e.temperature, top_p=e.top_p, stop=templates.stop_strings(), seed=cfg.seed,
        desc=f"eval {model_name}",
    )
    gen_seconds = time.time() - start
    records = []
    for p, samples in zip(problems, outputs):
        for k, g in enumerate(samples):
            cut = templates.cut(g.text)
            verdict = score_problem(p, cut.answer) if cut.answer is not None else None
            records.append({
                "question_id": p.id, "k": k, "task": p.task, "difficulty": p.difficulty, "text": g.text,
                "predicted": cut.answer, "correct": bool(verdict and verdict.correct),
                "reason": verdict.reason if verdict else "no answer", "format_ok": cut.format_ok,
                "format_error": cut.error, "finished": g.finished, "completion_tokens": len(g.token_ids),
            })
    run.write_rows(f"eval/{model_name}/samples.parquet", records)
    metrics = summarize(records)
    metrics.update({"model": model_name, "generation_seconds": gen_seconds, "fingerprint": fingerprint,
                    "sampling": {"temperature": e.temperature, "top_p": e.top_p, "n": e.num_generations,
                                 "max_completion_length": e.max_completion_length}})
    run.write_json(f"eval/{model_name}/metrics.json", metrics)
    summary_path = run.path / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary[model_name] = {k: metrics[k] for k in ("accuracy", "ci_low", "ci_high", "n", "by_difficulty", "by_task")}
    run.write_json("eval/summary.json", summary)
    return metrics
