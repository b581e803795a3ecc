"""eval: held-out accuracy of every reasoning model of the run (pi0, the final model(s), the baselines).

    varreason eval --config demo --output-dir runs/demo

A model is evaluated again only when its weights or the eval settings changed (`eval_fingerprint`).
`varreason eval --model DIR --benchmark NAME` (benchmarks, any model) is `eval/evaluator.py`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from varreason.config import RunConfig
from varreason.eval.metrics import summarize
from varreason.runs import RunDir, ShardFinished
from varreason.stages.common import load_problems
from varreason.templates import Templates

REASONING_MODELS_FIRST = ("initial", "final", "sft-matched")
NOT_REASONING_MODELS = ("base", "posterior")


def reasoning_models(run: RunDir) -> list[str]:
    """Every finished model of the run that answers without a hint: pi0, the final model(s), baselines."""
    from varreason.models import is_model_folder

    folder = run.path / "models"
    names = [d.name for d in folder.iterdir() if d.is_dir() and not d.name.endswith(".work")
             and d.name not in NOT_REASONING_MODELS and is_model_folder(d)] if folder.exists() else []
    order = {n: i for i, n in enumerate(REASONING_MODELS_FIRST)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def eval_fingerprint(cfg: RunConfig, model_dir: Path) -> str:
    """Identifies (model weights, eval settings, test set): an evaluation is redone only when one of them changed."""
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    payload = json.dumps([stamp, cfg.section_hash("seed", "task", "format", "eval")])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stage_eval(cfg: RunConfig, run: RunDir) -> dict:
    """Held-out accuracy of every reasoning model of the run (skipping those already evaluated as they are).

    A `--shard i/n` job does its chunks of every model that needs an evaluation, then stops."""
    accuracy, unfinished = {}, []
    for name in reasoning_models(run):
        try:
            accuracy[name] = evaluate_if_changed(cfg, run, name)["accuracy"]
        except ShardFinished as done:
            unfinished.append((name, done))
    if unfinished:
        raise ShardFinished("eval " + ", ".join(n for n, _ in unfinished), sum(d.done for _, d in unfinished),
                            sum(d.missing for _, d in unfinished))
    return {"accuracy": accuracy}


def evaluate_if_changed(cfg: RunConfig, run: RunDir, model_name: str, force: bool = False) -> dict:
    """The model's metrics: the stored ones when its weights and the eval settings are unchanged, else a new eval."""
    fingerprint = eval_fingerprint(cfg, run.path / "models" / model_name)
    previous = run.read_json(f"eval/{model_name}/metrics.json", {})
    stored = previous.get("fingerprint") == fingerprint and not force
    metrics = previous if stored else evaluate_model(cfg, run, model_name, fingerprint)
    record_summary(run, model_name, metrics)  # also when a kill fell between metrics.json and summary.json
    run.drop_finished_shards(fingerprint)  # and between metrics.json and the removal of its shards
    return metrics


def record_summary(run: RunDir, model_name: str, metrics: dict) -> None:
    """The model's entry in eval/summary.json (models in `reasoning_models` order), written only when it changed."""
    summary = run.read_json("eval/summary.json", {})
    entry = json.loads(json.dumps({k: metrics[k] for k in ("accuracy", "ci_low", "ci_high", "n", "by_difficulty",
                                                             "by_task")}))  # as it reads back from the file
    if summary.get(model_name) == entry:
        return
    summary[model_name] = entry
    order = {n: i for i, n in enumerate(REASONING_MODELS_FIRST)}
    run.write_json("eval/summary.json", dict(sorted(summary.items(), key=lambda kv: (order.get(kv[0], len(order)),
                                                                                     kv[0]))))


def evaluate_model(cfg: RunConfig, run: RunDir, model_name: str, fingerprint: str = "") -> dict:
    """Held-out accuracy of one model of the run: samples with verdicts and metrics JSON (`evaluate_if_changed` adds
    the summary entry)."""
    from varreason.backends import open_engine

    model_dir = run.path / "models" / model_name
    with open_engine(cfg.backend_of("eval"), model_dir, batch_size=cfg.eval.batch_size, vllm=cfg.vllm,
                     seed=cfg.seed) as engine:
        return _evaluate(cfg, run, model_name, fingerprint, engine)


def _evaluate(cfg: RunConfig, run: RunDir, model_name: str, fingerprint: str, generator) -> dict:
    from varreason.backends.sampling import sampling_work

    model_dir = run.path / "models" / model_name
    templates = Templates(cfg.format, generator.tokenizer)
    problems = load_problems(run, "test")
    e = cfg.eval
    start = time.time()

    def row(p, k: int, v) -> dict:
        return {"question_id": p.id, "k": k, "task": p.task, "difficulty": p.difficulty, "text": v.generation.text,
                "predicted": v.cut.answer, "correct": v.correct, "reason": v.reason, "format_ok": v.cut.format_ok,
                "format_error": v.cut.error, "finished": v.generation.finished,
                "completion_tokens": len(v.generation.token_ids)}

    work = sampling_work(generator, templates, lambda p: templates.prompt(p.question), row, n=e.num_generations,
                         settings=e, tag="eval", seed=cfg.seed)
    with run.running(fingerprint or eval_fingerprint(cfg, model_dir)):  # shards of other weights are never reused
        records = run.sharded(f"eval/{model_name}", problems, e.batch_size, work,
                              artifact=f"eval/{model_name}/samples.parquet", desc=f"eval {model_name}")
    gen_seconds = time.time() - start
    metrics = summarize(records)
    metrics.update({"model": model_name, "generation_seconds": gen_seconds, "fingerprint": fingerprint,
                    "sampling": {"temperature": e.temperature, "top_p": e.top_p, "n": e.num_generations,
                                 "max_completion_length": e.max_completion_length}})
    run.write_json(f"eval/{model_name}/metrics.json", metrics)
    return metrics
