"""The run directory: artifacts written atomically, and a manifest of finished stages.

A stage is skipped when its manifest entry has the same config hash and its outputs exist; anything written
goes to a temporary name first and is renamed into place, so a killed run never leaves a half-written artifact
that looks finished.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("varreason", "torch", "transformers", "datasets", "accelerate", "tokenizers", "math-verify",
                 "reasoning-gym"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.path / "manifest.json"

    # --- manifest ----------------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text())

    def is_done(self, stage: str, config_hash: str, outputs: list[str]) -> bool:
        entry = self.manifest()["stages"].get(stage)
        return bool(entry and entry.get("config_hash") == config_hash
                    and all((self.path / o).exists() for o in outputs))

    def record(self, stage: str, config_hash: str, outputs: list[str], inputs: list[str], counts: dict,
               wall_seconds: float) -> None:
        manifest = self.manifest()
        manifest["stages"][stage] = {
            "config_hash": config_hash, "inputs": inputs, "outputs": outputs, "counts": counts,
            "wall_seconds": round(wall_seconds, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": library_versions(),
        }
        self.write_json("manifest.json", manifest)

    # --- atomic artifact I/O -------------------------------------------------------------------------------------
    def _tmp(self, rel: str) -> tuple[Path, Path]:
        final = self.path / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        return final, final.with_name(f".{final.name}.tmp{os.getpid()}")

    def write_json(self, rel: str, obj) -> Path:
        final, tmp = self._tmp(rel)
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        os.replace(tmp, final)
        return final

    def write_text(self, rel: str, text: str) -> Path:
        final, tmp = self._tmp(rel)
        tmp.write_text(text)
        os.replace(tmp, final)
        return final

    def write_rows(self, rel: str, rows: list[dict]) -> Path:
        """A list of records as Parquet (opens with `datasets.load_dataset('parquet', ...)` or pandas)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        final, tmp = self._tmp(rel)
        rows = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, final)
        return final

    def read_rows(self, rel: str) -> list[dict]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path / rel).to_pylist()
