"""A throwaway copy of the project for tests that run real `dvc repro` / stage commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore",
                 ".dvc/config", ".dvc/.gitignore"]
PROJECT_DIRS = ["minimind", "stages", "pipelines", "presets"]


def copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in PROJECT_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, dest / name)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def executed(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_param(root: Path, path: str, value: object) -> None:
    params_file = root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def stage_env(**extra: str) -> dict[str, str]:
    """The environment stage subprocesses get: this venv first on PATH, local MLflow store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", **extra)
    return env


def make_project(root: Path, env: dict[str, str], preset: str = "tiny-test") -> None:
    """Copy the project into root, apply a preset and commit it to a fresh git repo."""
    copy_project(root)
    run([sys.executable, "-m", "pipelines.presets", "apply", preset], root, env)
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "test project"], root, env)


DVC = str(Path(sys.executable).parent / "dvc")
