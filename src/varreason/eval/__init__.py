"""The evaluation suite: benchmarks, answer extraction, verification, the code sandbox, metrics and the evaluator.

    benchmarks.py  benchmark specs (the paper's and built-in), loaders, scoring of one sample per answer type
    extract.py     answer extraction per type (math: section / boxed / final line; multiple-choice letters)
    verify.py      answer checking (math-verify in a bounded-time worker process, integers); never raises
    sandbox.py     code answers: tests in a separate process with rlimits, no network, no fork
    metrics.py     accuracy + Wilson CI, avg@n, unbiased pass@k, bootstrap CIs, macro averages
    evaluator.py   `varreason eval --model`: batched, resumable (shards), results / summary / plots

Nothing is imported here, so `varreason.eval.verify` (which the tasks import) stays free of torch.
"""
