"""The package's shape: stage hashes that existing run folders depend on, imports that run one way, a small top level."""

import ast
from pathlib import Path

from varreason.config import RunConfig
from varreason.pipeline import ORDER, STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "varreason"

# Stage config hashes of the default config, as the code before the layout move computed them. A run folder is reused
# only when these stay the same: a change here redoes every user's finished stages. If a default changes on purpose,
# update the pins and say so in the change's note.
DEFAULT_HASHES = {
    "data": "bb5aed763598710e", "base": "545eda47c3fc6922", "initial": "9a6665646c0b94f0",
    "posterior": "16d2c339f75f522f", "sample": "3cb55009a21f8231", "score": "3a6fd94fe91cf5c6",
    "rollout": "54a54eba670d3d79", "weights": "b557ce6b565aa69a", "build": "dd71b6bcbd0065c8",
    "final": "69402423b47bf0e3", "matched": "bd16161051a3d473", "rft": "aa5d6ff7d6e851a7",
    "grpo": "0a5f138b525eb5a8", "eval": "467f1f5610d7dd56",
}
NO_HINT_HASHES = {  # sample.proposal prior, final.name no-hint (the no-hint method of `compare`)
    "sample": "405b3df2213b0a6e", "score": "12969bcc6c2422a4", "rollout": "adc6359407cc7dcd",
    "weights": "1dc414479d26e95f", "build": "ee6df049bc15c96e", "final": "204a0feab3f07f8a",
    "matched": "269360e5d7d671ce", "rft": "79cc892835f566d9", "grpo": "63d36f3c8ed551a3",
}


def test_stage_hashes_unchanged():
    cfg = RunConfig()
    assert {n: s.config_hash(cfg) for n, s in STAGES.items()} == DEFAULT_HASHES
    cfg.sample.proposal, cfg.final.name = "prior", "no-hint"
    assert {n: STAGES[n].config_hash(cfg) for n in NO_HINT_HASHES} == NO_HINT_HASHES


def test_stage_outputs_follow_the_config():
    cfg = RunConfig()
    assert STAGES["final"].outputs(cfg) == ["models/final/config.json"]
    assert STAGES["base"].outputs(cfg) == ["models/base/config.json"]
    cfg.model.name_or_path, cfg.final.name, cfg.final.sft_matched = "some/model", "final-acc", False
    cfg.rollout.num_generations, cfg.sample.proposal = 0, "prior"
    assert STAGES["base"].outputs(cfg) == []
    assert STAGES["final"].outputs(cfg) == ["models/final-acc/config.json"]
    assert STAGES["matched"].outputs(cfg) == []
    assert STAGES["posterior"].outputs(cfg) == []
    assert STAGES["rollout"].outputs(cfg) == ["scores/prior_samples.parquet"]
    assert ORDER[0] == "data" and ORDER[-1] == "eval" and "rft" not in ORDER and "grpo" not in ORDER


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_no_module_imports_private_names_of_another():
    offenders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("varreason"):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_stages_do_not_import_the_pipeline_or_each_other():
    """Imports run one way: pipeline -> stages -> common helpers; a stage module never reaches up or sideways."""
    for path, tree in _modules():
        if path.parent.name != "stages":
            continue
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m in ("varreason.pipeline", "varreason.compare", "varreason.cli") for m in imported), path
        siblings = {m for m in imported if m.startswith("varreason.stages.") and m != "varreason.stages.common"}
        assert siblings == set(), (path.name, siblings)


def test_top_level_stays_small():
    assert len(list(PACKAGE.glob("*.py"))) <= 13  # 13th: logs.py (terminal vs the run's log file)
