"""Where a stage run came from: its dvc.yaml entry, the git commit and its inputs' hashes.

dvc.yaml is the single source of truth for what a stage reads: the params keys it lists are
the ones logged to MLflow and hashed, and its deps are the inputs whose hashes are tagged on
the run. Hashes of upstream outputs are taken from dvc.lock (DVC recorded them when that
stage finished), so a multi-GB dataset is never re-hashed here; only small code deps are.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class StageSpec:
    """A stage's entry in dvc.yaml, reduced to what the pipeline code needs."""

    name: str
    params: list[str]
    deps: list[str]
    outs: list[str]
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    persistent: list[str] = field(default_factory=list)  # outs kept across runs (checkpoints)


def _paths(entries: list[Any]) -> list[str]:
    """dvc.yaml lists outs either as plain paths or as {path: {options}}."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def read_stage_spec(name: str, root: Path) -> StageSpec:
    """Read stage `name` from dvc.yaml; a clear error if it is not declared there."""
    dvc_yaml = root / "dvc.yaml"
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    if name not in stages:
        raise KeyError(f"{dvc_yaml}: no stage named {name!r} (stages: {', '.join(stages)})")
    spec = stages[name]
    params: list[str] = []
    for entry in spec.get("params", []):
        # `- key` for params.yaml, or `- other.yaml: [keys]`; we only read params.yaml.
        params.extend([entry] if isinstance(entry, str) else [])
    return StageSpec(
        name=name,
        params=params,
        deps=_paths(spec.get("deps", [])),
        outs=_paths(spec.get("outs", [])),
        metrics=_paths(spec.get("metrics", [])),
        plots=_paths(spec.get("plots", [])),
        persistent=[next(iter(e)) for e in spec.get("outs", [])
                    if isinstance(e, dict) and next(iter(e.values())).get("persist")],
    )


def all_deps(root: Path) -> set[str]:
    """Every dependency path of every stage in dvc.yaml."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}).get(
        "stages", {})
    return {dep for spec in stages.values() for dep in _paths(spec.get("deps", []))}


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirtiness of the working tree; 'unknown' outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(dirty).lower()}


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _md5_tree(path: Path) -> str:
    """Hash of a small directory (code): relative names and contents, caches skipped."""
    digest = hashlib.md5(usedforsecurity=False)
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_md5_file(file)}\n".encode())
    return digest.hexdigest() + ".dir"


def _locked_hashes(root: Path) -> dict[str, str]:
    """path -> md5 for every out recorded in dvc.lock."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {
        out["path"]: out.get("md5", "")
        for stage in stages.values()
        for out in stage.get("outs", [])
    }


def dep_hashes(spec: StageSpec, root: Path) -> dict[str, str]:
    """md5 of each dep: from dvc.lock for upstream outputs, computed for code files."""
    locked = _locked_hashes(root)
    hashes: dict[str, str] = {}
    for dep in spec.deps:
        path = root / dep
        if dep in locked:
            hashes[dep] = locked[dep]
        elif path.is_file():
            hashes[dep] = _md5_file(path)
        elif path.is_dir():
            hashes[dep] = _md5_tree(path)
        else:
            hashes[dep] = "missing"
    return hashes
