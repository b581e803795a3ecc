"""`varreason` command line: `run` (every stage in order) and one command per stage.

Every config field can be overridden: `--section.field VALUE` (or `section.field=VALUE`), e.g.
`varreason run --initial.learning_rate 1e-3 --task.n_train 2000`. Bad input is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from varreason.errors import InputError

COMMANDS = {
    "run": "run every stage in order and print the results table (stages: data base initial posterior sample score "
           "rollout weights build final matched eval)",
    "data": "build the train / test problems (data/*.parquet)",
    "base": "build the starting model (a tiny Qwen3 from scratch, or check the given model)",
    "initial": "train pi0 by SFT on the teacher traces (models/initial)",
    "posterior": "train q_phi by SFT with the answer hint in its prompt (models/posterior)",
    "sample": "sample K traces per training question from q, or from pi0 with --sample.proposal prior "
              "(samples/posterior.parquet)",
    "score": "per-token log-probs of each trace under pi0 and q, and of the answer under pi0 (scores/scores.parquet)",
    "rollout": "M answers of pi0 after each trace, verified; pi0's own traces (scores/rollouts.parquet, ...)",
    "weights": "importance weights per (question, trace): log ratio, estimator, log rho, rho~, ESS (weights.parquet)",
    "build": "the final training set: best (+mix) or weighted (train/final.parquet)",
    "final": "train the final model by weighted SFT on train/final.parquet (models/<final.name>)",
    "matched": "train sft-matched: the teacher data with the final model's init, steps and batch (models/sft-matched)",
    "eval": "evaluate the run's models on the held-out split (eval/), or with --model any model on benchmarks",
    "rft": "RFT baseline: keep pi0's verified traces (`sample` with --sample.proposal prior) and fine-tune "
           "(models/<rft.name>)",
    "grpo": "GRPO baseline on TRL's GRPOTrainer from pi0, our verifier as the reward (models/<grpo.name>)",
    "compare": "train every method (compare.methods) from the same pi0, evaluate all the same way; writes "
               "DIR/summary.json, report.md, plots and the accuracy-bias diagnostic",
    "config": "print the resolved config (YAML) and exit",
}
EPILOG = """config: --config FILE_OR_PRESET (default: the 'demo' preset; presets: demo, smoke).
overrides: any field as --section.field VALUE; values are parsed as YAML. Fields and defaults:
"""


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """`--a.b v`, `--a.b=v` and `a.b=v` into (key, value) pairs; anything else is an InputError."""
    pairs, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        elif tok.startswith("--"):
            if i + 1 >= len(tokens):
                raise InputError(f"option '{tok}' needs a value")
            key, value = tok[2:], tokens[i + 1]
            i += 2
        elif "=" in tok:
            key, value = tok.split("=", 1)
            i += 1
        else:
            raise InputError(f"unexpected argument '{tok}' (overrides look like --section.field VALUE)")
        pairs.append((key, value))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    from varreason.config import field_help

    parser = argparse.ArgumentParser(prog="varreason", description="Variational reasoning for language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG + field_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", default=None, help="YAML config file or preset name (default: demo)")
        p.add_argument("--output-dir", default=None, help="run directory (default: the config's output_dir)")
        if name != "config":
            p.add_argument("--force", action="store_true", help="redo the stage(s) even if their artifacts exist")
        if name == "compare":
            p.add_argument("--reuse", action="append", default=[], metavar="RUN_DIR",
                           help="a finished run folder whose stages are adopted where the config matches; repeatable")
        if name == "eval":
            g = p.add_argument_group("benchmark evaluation (with --model)")
            g.add_argument("--model", help="HF model folder or hub id to evaluate on benchmarks")
            g.add_argument("--benchmark", action="append", default=[],
                           help="spec name (math500, aime24, ..., arith) or a .jsonl/.parquet file; repeatable")
            g.add_argument("--n", type=int, default=None, help="samples per problem (default: the spec's)")
            g.add_argument("--data", default=None, help="local file with the benchmark's rows (data not shipped)")
            g.add_argument("--limit", type=int, default=None, help="evaluate the first N problems only")
            g.add_argument("--chunk-size", type=int, default=64, help="problems per resumable shard")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["run"]  # `varreason` alone runs the embedded demo
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        from varreason.config import dump_config, load_config

        overrides = parse_overrides(rest)
        if args.output_dir:
            overrides.append(("output_dir", args.output_dir))
        cfg = load_config(args.config, overrides)
        if args.command == "config":
            print(dump_config(cfg), end="")
            return 0
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        from varreason.models import set_threads
        from varreason.pipeline import ORDER, run_all

        set_threads(cfg.num_threads)
        if args.command == "eval" and getattr(args, "model", None):
            return _benchmark_eval(args, cfg)
        if args.command == "eval" and args.benchmark:
            raise InputError("--benchmark needs --model (the model to evaluate)")
        if args.command == "compare":
            from varreason.compare import run_compare

            run_compare(cfg, cfg.output_dir, reuse=args.reuse, force=args.force)
            return 0
        stages = ORDER if args.command == "run" else [args.command]
        run_all(cfg, stages, force=args.force)
        return 0
    except InputError as exc:
        print(f"varreason: error: {exc.line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("varreason: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _benchmark_eval(args, cfg) -> int:
    from pathlib import Path

    from varreason.eval.evaluator import evaluate_many

    if not args.benchmark:
        raise InputError("--model needs at least one --benchmark (a spec name or a .jsonl/.parquet file)")
    out = args.output_dir or str(Path("runs") / "eval" / Path(args.model.rstrip("/")).name)
    evaluate_many(args.model, args.benchmark, out, n=args.n, e=cfg.eval, fmt=cfg.format, seed=cfg.seed,
                  data=args.data, limit=args.limit, chunk_size=args.chunk_size, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
