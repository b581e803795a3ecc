"""The stage table: hashed sections computed from `reads`, so a stage's hash follows every setting upstream of it and
no other; the sharded and engine lists come from the table and the config's declarations."""

import dataclasses

import pytest

from varreason.config import ENGINE_SECTIONS, RunConfig
from varreason.stages.graph import SHARDED, STAGES

SECTIONS = [f.name for f in dataclasses.fields(RunConfig)]


def _changed(cfg: RunConfig, section: str) -> RunConfig:
    """cfg with one setting of `section` changed (to another valid value)."""
    out = dataclasses.replace(cfg)
    out.__dict__.update({k: dataclasses.replace(v) if dataclasses.is_dataclass(v) else v for k, v in cfg.__dict__.items()})
    if section in ("seed", "rounds", "num_threads"):
        setattr(out, section, getattr(cfg, section) + 1)
    elif section in ("output_dir", "backend"):
        setattr(out, section, "elsewhere" if section == "output_dir" else "vllm")
    else:
        block = getattr(out, section)
        for f in dataclasses.fields(block):
            value = getattr(block, f.name)
            if isinstance(value, bool):
                setattr(block, f.name, not value)
                break
            if isinstance(value, int) and value > 0:
                setattr(block, f.name, value + 1)
                break
    return out


def _upstream(name: str) -> set[str]:
    out = set()
    for r in STAGES[name].reads:
        out |= {r} | _upstream(r)
    return out


@pytest.mark.parametrize("mode", ["teacher", "forward_kl"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_hash_follows_exactly_the_settings_it_and_its_upstream_read(stage, mode):
    cfg = RunConfig()
    cfg.posterior.mode = mode
    reads = set(STAGES[stage].sections(cfg))
    if STAGES[stage].engines and reads & set(ENGINE_SECTIONS):  # the engine that sampled or scored is hashed too
        reads |= {"backend", "vllm"}
    for upstream in _upstream(stage):  # what an upstream stage depends on, this one depends on
        assert set(STAGES[upstream].sections(cfg)) <= reads, (stage, upstream)
    for section in SECTIONS:
        other = _changed(cfg, section)
        changed = STAGES[stage].config_hash(other) != STAGES[stage].config_hash(cfg)
        if section in reads and other.to_dict()[section] != cfg.to_dict()[section]:
            # the one field changed may be one a hash leaves out at its default: then the section's other fields
            # still reach the hash, which the property below checks through the upstream stages
            assert changed or STAGES[stage].settings(other) == STAGES[stage].settings(cfg), (stage, section)
        if section not in reads:
            assert not changed, (stage, section)


def test_forward_kl_makes_q_and_everything_after_it_depend_on_the_phi_phase():
    cfg = RunConfig()
    cfg.posterior.mode = "forward_kl"
    for stage in ("posterior", "sample", "score", "weights", "build", "final", "rft"):
        assert {"sample", "rollout", "weights"} <= set(STAGES[stage].sections(cfg)), stage
    assert "weights" not in STAGES["matched"].sections(cfg)


def test_sharded_and_engine_lists_come_from_the_declarations():
    assert SHARDED == tuple(n for n, s in STAGES.items() if s.parallel == "split") == ("sample", "score", "rollout", "eval")
    assert set(ENGINE_SECTIONS) == {f.name for f in dataclasses.fields(RunConfig)
                                    if hasattr(getattr(RunConfig(), f.name), "backend")}
    assert set(ENGINE_SECTIONS) == set(SHARDED)  # a stage that samples or scores has a section with its engine


def test_a_round_records_the_checkpoints_it_starts_from_and_is_redone_when_they_change(tmp_path):
    """Round t >= 2 is given round t-1's models in its manifest (`starts`), not through models/initial: every stage
    records their run ids, so a remade round t-1 model makes the round's stages not done."""
    import json

    from varreason.runs import RunDir

    (tmp_path / "models/final").mkdir(parents=True)
    (tmp_path / "models/final/config.json").write_text("{}")
    folder = tmp_path / "rounds/2"
    folder.mkdir(parents=True)
    manifest = {"stages": {"initial": {"run_id": "pi0"}},
                "starts": {"policy": {"path": "../../models/final", "run_id": "final-1"},
                           "posterior": {"path": "../../models/posterior", "run_id": "q-1"}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    run, cfg = RunDir(folder), RunConfig()
    assert run.starts["policy"].path.resolve() == (tmp_path / "models/final").resolve()
    made_from = STAGES["sample"].made_from(cfg, run)
    assert made_from == {"initial": "pi0", "start:policy": "final-1", "start:posterior": "q-1"}
    from varreason.stages.common import policy_dir

    assert policy_dir(run) == str(folder / "../../models/final")  # not models/initial (pi0, always)
    manifest["stages"]["sample"] = {"config_hash": "h", "made_from": made_from, "outputs": []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run.is_done("sample", "h", [], STAGES["sample"].made_from(cfg, run))
    manifest["starts"]["policy"]["run_id"] = "final-2"  # round 1's final model was made anew
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not run.is_done("sample", "h", [], STAGES["sample"].made_from(cfg, run))
