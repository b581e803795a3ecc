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
    "grpo": "0a5f138b525eb5a8", "eval": "467f1f5610d7dd56", "star": "e14a0ca409376269",  # star: new in issue 25
    "trice": "88fad9b73538be8f",  # trice.schedule: online, a new default (the rounds schedule collapsed on the demo)
    "latro": "731910ed5086aa16", "self-distill": "3afdf487148b113a",  # issue 26
}
NO_HINT_HASHES = {  # sample.proposal prior, final.name no-hint (the no-hint method of `compare`)
    "sample": "405b3df2213b0a6e", "score": "12969bcc6c2422a4", "rollout": "adc6359407cc7dcd",
    "weights": "1dc414479d26e95f", "build": "ee6df049bc15c96e", "final": "204a0feab3f07f8a",
    "matched": "269360e5d7d671ce", "rft": "79cc892835f566d9", "grpo": "63d36f3c8ed551a3", "star": "ef8f8683fad579e8",
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
    # 13th: logs.py (terminal vs the run's log file); 14th: compute.py (the compute account that engines, training
    # and compare all write or read)
    assert len(list(PACKAGE.glob("*.py"))) <= 14


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the varreason modules it imports, at the top and inside functions alike (an import inside a function
    hides a cycle, it does not break one). `from pkg import name` counts as importing pkg.name when that is a module."""
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `.` is the module's package, each further dot one folder up
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                edges |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[module] = {m for m in edges if m in files and m != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (a -> b -> ... -> a), shortest first from each module caught in one, so that every such
    module is named at least once with the imports that lead back to it."""
    def shortest_way_back(start: str) -> list[str] | None:
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            for w in sorted(graph[path[-1]]):
                if w == start:
                    return [*path, start]
                if w not in seen:
                    seen.add(w)
                    paths.append([*path, w])
        return None

    cycles: list[list[str]] = []
    for module in sorted(graph):
        if not any(module in c for c in cycles) and (cycle := shortest_way_back(module)):
            cycles.append(cycle)
    return cycles


def test_import_cycle_detector_names_the_cycle(tmp_path):
    pkg = tmp_path / "varreason"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from varreason.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from varreason.c import x\n")  # hidden inside a function
    (pkg / "c.py").write_text("from .a import y\nimport varreason.sub\n")
    (pkg / "d.py").write_text("from varreason import a, c\n")  # imports into the cycle, not part of it
    graph = import_graph(pkg)
    assert graph["varreason.c"] == {"varreason.a", "varreason.sub"}
    assert import_cycles(graph) == [["varreason.a", "varreason.sub.b", "varreason.c", "varreason.a"]]


def test_config_reads_nothing_and_sits_at_the_bottom():
    """config.py imports no other layer (so every layer can import it) and nothing that asks the machine: those checks
    are preflight.py's."""
    assert import_graph()["varreason.config"] <= {"varreason.errors"}


def test_no_import_cycles():
    """Imports run one way (the list under Architecture in docs/DESIGN.md); a cycle, even through an import inside a
    function, means two modules each need the other: one of them holds something that belongs elsewhere."""
    cycles = import_cycles(import_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
