"""`varreason` command line: `run` (every stage in order), one command per stage, `compare`, `eval --model`, `config`.

    varreason run --config demo --output-dir runs/demo                   # one process
    torchrun --nproc_per_node 8 -m varreason run --config demo ...       # a process group (also accelerate launch)
    varreason sample --config demo --shard 0/4 ...                       # separate jobs, then again without --shard

Every config field can be overridden: `--section.field VALUE` (or `section.field=VALUE`), e.g.
`varreason run --initial.learning_rate 1e-3 --task.n_train 2000`. Bad input is one line on stderr, exit 2.

Several processes (docs/scale.md): under torchrun / accelerate launch the training stages are data-parallel (HF
Trainer) and sample, score, rollout and eval split their chunks across the ranks; rank 0 writes the artifacts.
`--shard i/n` is for jobs that are not one process group (one per GPU or node, a scheduler's array): each does
every n-th chunk of one sharded stage; the same command without `--shard` merges them and does what is missing.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from varreason import logs
from varreason.errors import InputError, disk_failure
from varreason.stages.graph import SHARDED

# name -> (what it does, the arguments of its invocation after `varreason NAME`)
COMMANDS = {
    "run": (("run every stage in order and print the results table (stages: data base initial posterior sample score "
            "rollout weights build final matched eval; with --rounds T, posterior ... final again per round in "
            "rounds/<t>/)"), "--config demo --output-dir runs/demo"),
    "data": ("build the train / test problems (data/*.parquet)", "--config demo --output-dir runs/demo"),
    "base": ("build the starting model (a tiny Qwen3 from scratch, or check the given model)",
             "--config demo --output-dir runs/demo"),
    "initial": ("train pi0 by SFT on the teacher traces (models/initial)", "--config demo --output-dir runs/demo"),
    "posterior": (("train q_phi with the hint in its prompt: SFT on the teacher traces, or with --posterior.mode "
                   "forward_kl weighted SFT on pi0's own traces (models/posterior)"),
                  "--config demo --output-dir runs/demo --posterior.hint solution"),
    "sample": (("sample K traces per training question from q, or from pi0 with --sample.proposal prior "
               "(samples/posterior.parquet)"), "--config demo --output-dir runs/demo --sample.num_generations 8"),
    "score": ("per-token log-probs of each trace under pi0 and q, and of the answer under pi0 (scores/scores.parquet)",
              "--config demo --output-dir runs/demo"),
    "rollout": ("M answers of pi0 after each trace, verified; pi0's own traces (scores/rollouts.parquet, ...)",
                "--config demo --output-dir runs/demo --rollout.num_generations 8"),
    "weights": (("importance weights per (question, trace): log ratio, estimator, log rho, rho~, ESS "
                "(weights.parquet)"), "--config demo --output-dir runs/demo --weights.estimator gml"),
    "build": ("the final training set: best (+mix) or weighted (train/final.parquet)",
              "--config demo --output-dir runs/demo --build.mode best"),
    "final": ("train the final model by weighted SFT on train/final.parquet (models/<final.name>)",
              "--config demo --output-dir runs/demo"),
    "matched": (("train sft-matched: the teacher data with the final model's init, steps and batch "
                "(models/sft-matched); --final.sft_paper also sft-paper, with half the batch"),
                "--config demo --output-dir runs/demo"),
    "eval": ("evaluate the run's models on the held-out split (eval/), or with --model any model on benchmarks",
             "--config demo --output-dir runs/demo"),
    "rft": (("RFT baseline: keep pi0's verified traces (`sample` with --sample.proposal prior) and fine-tune "
            "(models/<rft.name>)"), "--config demo --output-dir runs/rft --sample.proposal prior"),
    "star": (("STaR baseline: pi0's greedy trace per question, failures rationalized with the answer as a hint, "
              "verified traces kept without the hint, fine-tuned (models/<star.name>); compare's star method sets its "
              "sampling"),
             "--config demo --output-dir runs/star --sample.proposal prior --sample.num_generations 1 --sample.temperature 0"),
    "trice": (("TRICE: a persistent trace per question started from q's hinted trace; each step the current pi "
               "proposes for a batch of questions, their chains move when verified, one step of signed SFT with a "
               "leave-one-out control variate (trice.schedule online; rounds: the previous schedule) "
               "(models/<trice.name>); compare's trice method sets its sampling"),
              "--config demo --output-dir runs/trice --sample.num_generations 1 --trice.schedule online"),
    "self-distill": (("on-policy self-distillation: pi0 samples from its own prompt, q (models/posterior, frozen) "
                      "reads its hinted prompt + the same completion ids, pi is trained to match q token by token "
                      "(models/<self_distill.name>)"),
                     "--config demo --output-dir runs/demo --self_distill.distillation_alpha 0.5"),
    "grpo": ("GRPO baseline on TRL's GRPOTrainer from pi0, our verifier as the reward (models/<grpo.name>)",
             "--config demo --output-dir runs/demo"),
    "latro": (("LaTRO: self-rewarding RLOO on TRL's RLOOTrainer from pi0, reward log pi(y* | x, z) under the current "
               "policy, KL to pi0 (models/<latro.name>, latro/<latro.name>/rewards.parquet)"),
              "--config demo --output-dir runs/demo"),
    "compare": (("train every method (compare.methods) from the same pi0, evaluate all the same way; writes "
                "DIR/summary.json, report.md, plots and the accuracy-bias diagnostic"),
                "--config demo --output-dir runs/compare"),
    "config": ("print the resolved config (YAML) and exit", "--config demo"),
}
EPILOG = """config: --config FILE_OR_PRESET (default: the 'demo' preset; presets: {presets}); several merge in order,
and a YAML can build on others with `extends: PRESET_OR_FILE` (or a list). Relative paths in a YAML (task.source,
task.test_source, model.name_or_path) are read from that YAML's folder; `~` and $VARS are expanded. `varreason config`
prints the result with where each value came from.
overrides: any field as --section.field VALUE; values are parsed as YAML. Fields, defaults and what they mean:
"""


def invocation(name: str) -> str:
    """How a command is run, in one process and in several (the lines its `--help` opens with)."""
    args = COMMANDS[name][1]
    lines = [f"  one process:  varreason {name} {args}"]
    if name != "config":
        lines.append(f"  one group:    torchrun --nproc_per_node 8 -m varreason {name} {args}")
    if name in SHARDED:
        lines.append(f"  separate jobs: varreason {name} {args} --shard I/N   (I = 0..N-1; then once without --shard)")
    if name == "eval":
        lines.append("  benchmarks:   varreason eval --model DIR --benchmark math500 --n 4 --eval.temperature 0.7   (also with torchrun / --shard)")
    return "\n".join(lines)


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
    from varreason.config import field_help, preset_names

    parser = argparse.ArgumentParser(prog="varreason", description="Variational reasoning for language models.")
    parser.add_argument("--version", action="version", version=f"varreason {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=f"{help_text}\n\n{invocation(name)}",
                           epilog=EPILOG.format(presets=', '.join(preset_names())) + field_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", action="append", default=None, metavar="FILE_OR_PRESET",
                       help="YAML config file or preset name (default: demo); repeatable: later ones override "
                            "earlier ones, key by key (a YAML can also build on others with `extends:`)")
        p.add_argument("--output-dir", default=None, help="run directory (default: the config's output_dir)")
        if name != "config":
            p.add_argument("--force", action="store_true", help="redo the stage(s) even if their artifacts exist "
                           "(with the same settings; other settings need --overwrite too)")
            p.add_argument("--overwrite", action="store_true",
                           help="replace artifacts of the folder made with other settings (without it such a command "
                                "is refused before any work); the folder's config.yaml becomes this command's")
        if name == "run":
            p.add_argument("--until", default=None, metavar="STAGE",
                           help="stop after this stage (one of: data base initial posterior sample score rollout "
                                "weights build final matched eval); the same command without it goes on from there")
        if name in SHARDED:
            p.add_argument("--shard", default=None, metavar="I/N",
                           help="do only every N-th chunk starting at I and stop (separate jobs); the same command "
                                "without --shard merges the shards and does any that are missing")
        if name == "compare":
            p.add_argument("--reuse", action="append", default=[], metavar="RUN_DIR",
                           help="a finished run folder whose stages are adopted where the config matches; repeatable")
        if name == "eval":
            from varreason.eval.benchmarks import describe_specs
            from varreason.eval.evaluator import at_least_one

            g = p.add_argument_group("benchmark evaluation (with --model)", (
                "benchmarks: name, answer type, default n, prompt template (the question goes in as {question}, "
                "then the\nreasoning format's chat template wraps it; results.json records both; --prompt-template "
                "replaces it):\n" + describe_specs()))
            g.add_argument("--model", help="HF model folder or hub id to evaluate on benchmarks")
            g.add_argument("--benchmark", action="append", default=[],
                           help="spec name (listed above) or a .jsonl/.json/.csv/.tsv/.parquet file, e.g. a run's "
                                "data/test.parquet: its questions as they are, checked as the run's eval checks "
                                "them; repeatable. A run's model (<run>/models/NAME) without one: the run's "
                                "data/test.parquet. A run's model is evaluated with the run's config.yaml unless "
                                "--config is given, and written to runs/eval/<run>/NAME unless --output-dir is")
            g.add_argument("--num-samples", "--n", dest="n", type=at_least_one, default=None,
                           help="samples per problem, >= 1 (default: the spec's; a file: eval.num_generations); under "
                                "torchrun write --num-samples, since torchrun reads --n as one of its own options")
            g.add_argument("--data", default=None,
                           help="local file with the rows of the one hub spec given (math500, ...: data not shipped); "
                                "refused for a built-in spec (generated here) or a file benchmark")
            g.add_argument("--limit", type=at_least_one, default=None, help="evaluate the first N problems only (>= 1)")
            g.add_argument("--chunk-size", type=at_least_one, default=64, help="problems per resumable shard (>= 1)")
            g.add_argument("--prompt-template", default=None, metavar="TEMPLATE",
                           help="the prompt of every --benchmark instead of its spec's: a Python format string with "
                                "{question} (and {choices} for multiple choice); a literal brace is written twice")
        p.error = lambda message, parser=p: parser.exit(2, f"varreason: error: {message}\n")  # as main() does
    return parser


def main(argv: list[str] | None = None) -> int:
    logs.mark_start(process=argv is None)  # the final "wall time" counts start-up, imports and model loads too
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if int(os.environ.get("RANK", "0")) > 0:
        os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported: rank 0 alone shows progress
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["run"]  # `varreason` alone runs the embedded demo
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    output_dir = None  # the folder whose disk a failed write is checked against
    try:
        from varreason.config import dump_config, load_config

        overrides = parse_overrides(rest)
        if args.output_dir is not None:
            overrides.append(("output_dir", args.output_dir))
        benchmark = args.command == "eval" and getattr(args, "model", None)
        origins: dict = {}
        cfg = load_config(folder_config(args.config, overrides, benchmark and args.model), overrides, origins=origins)
        if not benchmark:  # eval --model writes to its own folder
            output_dir = cfg.output_dir
        if args.command == "config":
            print(dump_config(cfg, origins), end="")
            return 0
        from varreason.preflight import check_machine

        check_machine(cfg)  # what this machine must have for the config (vLLM, a GGUF file, loggers): before any stage
        _wandb_in_run_folder(cfg)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        ranks = _ranks(args)
        from varreason.models import set_threads
        from varreason.pipeline import ORDER, run_all

        set_threads(cfg.num_threads)
        if args.command == "eval" and getattr(args, "model", None):
            return _benchmark_eval(args, cfg, ranks)
        if args.command == "eval":
            given = [flag for flag, value, default in (
                ("--benchmark", args.benchmark, []), ("--num-samples", args.n, None), ("--data", args.data, None),
                ("--limit", args.limit, None), ("--chunk-size", args.chunk_size, 64),
                ("--prompt-template", args.prompt_template, None)) if value != default]
            if given:  # the run's own eval takes its settings from the config: eval.num_generations, ...
                raise InputError(f"{given[0]} needs --model (the model to evaluate on benchmarks); the run's own eval "
                                 "takes its settings from the config (--eval.num_generations, ...)")
        if args.command == "compare":
            from varreason.compare import run_compare

            if ranks.count > 1:
                raise InputError("compare runs in one process; launch `varreason run` (or rft, grpo) with torchrun")
            run_compare(cfg, cfg.output_dir, reuse=args.reuse, force=args.force, overwrite=args.overwrite)
            return 0
        stages = ORDER if args.command == "run" else [args.command]
        if getattr(args, "until", None) is not None:
            if args.until not in ORDER:
                raise InputError(f"--until: no stage '{args.until}'; stages: {' '.join(ORDER)}")
            stages = ORDER[: ORDER.index(args.until) + 1]
        run_all(cfg, stages, force=args.force, ranks=ranks, overwrite=args.overwrite)
        return 0
    except InputError as exc:
        print(f"varreason: error: {exc.line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("varreason: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a full or read-only disk is one line; anything else is a bug: its traceback
        failure = disk_failure(exc, output_dir)
        if failure is None:
            raise
        where = f": {failure.filename}" if failure.filename else ""
        if failure.errno in (errno.EACCES, errno.EPERM):  # a read or a write: the permissions are the user's to fix
            print(f"varreason: error: no permission{where}: {failure.strerror}", file=sys.stderr)
            return 2
        said = "" if failure is exc else f" [{type(exc).__name__}]"  # what the library called it
        print(f"varreason: error: cannot write{where}: {failure.strerror}{said} (nothing partial was kept; free space "
              "or choose a writable --output-dir, then rerun to resume)", file=sys.stderr)
        return 2


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("varreason")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _wandb_in_run_folder(cfg) -> None:
    """W&B writes ./wandb in the working directory by default: a run keeps everything in its folder, so its files go
    to <output_dir>/logs unless WANDB_DIR says otherwise (and the project is `varreason` unless WANDB_PROJECT does)."""
    from varreason.config import REPORT_TO_SECTIONS

    sections = [getattr(cfg, s).report_to for s in REPORT_TO_SECTIONS]
    if any("wandb" in names or "all" in names for names in sections):
        from pathlib import Path

        os.environ.setdefault("WANDB_DIR", str((Path(cfg.output_dir) / "logs").resolve()))
        os.environ.setdefault("WANDB_PROJECT", "varreason")


def folder_config(config: list[str] | None, overrides: list[tuple[str, str]], model: str | None = None,
                  ) -> list[str] | None:
    """The config a command starts from: --config when given; else the run folder's own config.yaml when the folder
    has one (a command on a finished run keeps its settings: the folder remembers what made it); else the demo.
    `eval --model` of a run's model: that run's config (its sampling and format, as its own eval used them)."""
    from pathlib import Path

    from varreason.config import load_config

    if config is not None:
        return config
    if model:
        run = model_run_folder(model)
        return None if run is None else [str(run / "config.yaml")]  # said after the work (one-line refusals)
    given = [value for key, value in overrides if key.replace("-", "_") == "output_dir"]
    folder = given[-1] if given else load_config(None).output_dir
    if not str(folder).strip():
        raise InputError("must name a folder, got an empty path", field="output_dir")
    saved = Path(folder).expanduser() / "config.yaml"
    if not saved.is_file():
        return None
    print(f"varreason: using the folder's config {saved} (--config to start from another)", file=sys.stderr)
    return [str(saved)]


def model_run_place(model: str):
    """(run folder, where in it) for a run's model folder: <run>/models/<name> ("."), or
    <run>/rounds/<t>/models/<name> ("rounds/<t>"); None for a hub id or any other folder. A run is a folder with the
    config.yaml and manifest.json that the pipeline writes (the path as given: compare's shared models are links)."""
    from pathlib import Path

    path = Path(model).expanduser()
    if path.parent.name != "models" or not path.is_dir():
        return None
    run, where = path.parent.parent, Path(".")
    if run.name.isdigit() and run.parent.name == "rounds" and is_run_folder(run.parent.parent):
        run, where = run.parent.parent, Path("rounds") / run.name
    return (run, where) if is_run_folder(run) else None


def is_run_folder(folder) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "manifest.json").is_file()


def model_run_folder(model: str):
    """The run folder a model folder belongs to (`model_run_place`), or None."""
    place = model_run_place(model)
    return place[0] if place else None


def benchmark_defaults(model: str, benchmarks: list[str], output_dir: str | None) -> tuple[list[str], str]:
    """`eval --model`'s benchmarks and folder when not given: a run's model is scored on the run's own held-out file
    (what its eval stage scored) and written under runs/eval/ by the run's path, so two runs' `initial` models do not
    share a folder; any other model under runs/eval/<its folder name>."""
    from pathlib import Path

    place = model_run_place(model)
    if not benchmarks:
        test = place[0] / "data" / "test.parquet" if place is not None else None
        if test is None or not test.is_file():
            raise InputError("--model needs at least one --benchmark (a spec name or a .jsonl/.json/.csv/.tsv/.parquet "
                             "file); a run's model (<run>/models/NAME) without one is scored on <run>/data/test.parquet")
        benchmarks = [str(test)]
    if output_dir:
        return benchmarks, output_dir
    name = Path(model.rstrip("/")).name
    if place is None:
        return benchmarks, str(Path("runs") / "eval" / name)
    run, where = place
    absolute = Path(os.path.abspath(run))  # not resolved: the path the user named
    try:
        run_path = absolute.relative_to(Path(os.path.abspath(".")))
    except ValueError:  # a run outside the working directory: its whole path, so two such runs do not share
        run_path = Path(*absolute.parts[1:])
    if not run_path.parts:  # the working directory is the run: its folder name
        run_path = Path(absolute.name)
    if run_path.parts[0] == "runs" and len(run_path.parts) > 1:
        run_path = Path(*run_path.parts[1:])
    return benchmarks, str(Path("runs") / "eval" / run_path / where / name)


def _ranks(args):
    """This process's share: a torchrun / accelerate launch group, a `--shard i/n` job, or one process."""
    from varreason.runs import parse_shard, process_group

    shard = getattr(args, "shard", None)
    if shard and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("--shard is for separate jobs; under torchrun the ranks already split the work", field="shard")
    if shard:
        return parse_shard(shard)
    ranks = process_group()
    if not ranks.main:  # warnings once per group: rank 0's
        logging.getLogger().setLevel(logging.ERROR)
    return ranks


def _benchmark_eval(args, cfg, ranks) -> int:
    from pathlib import Path

    from varreason.eval.evaluator import evaluate_many

    benchmarks, out = benchmark_defaults(args.model, args.benchmark, args.output_dir)
    done = evaluate_many(args.model, benchmarks, out, n=args.n, e=cfg.eval, fmt=cfg.format, seed=cfg.seed,
                  data=args.data, limit=args.limit, chunk_size=args.chunk_size, force=args.force,
                  overwrite=args.overwrite, ranks=ranks,
                  backend=cfg.backend_of("eval"), vllm=cfg.vllm, prompt_template=args.prompt_template)
    if ranks.main and "unfinished" not in done:  # a --shard job's part writes no summary
        run = model_run_folder(args.model)
        said = [f"config: the run's {run / 'config.yaml'}" if run is not None and args.config is None else "",
                f"benchmark: the run's {benchmarks[0]}" if not args.benchmark else ""]
        said = "; ".join(x for x in said if x)
        print(f"results: {Path(out) / 'summary.json'} (a folder per benchmark{'; ' + said if said else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
