"""The training stages as a user runs them: killed and resumed, and under torchrun."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.project import DVC, make_project, run, set_param, stage_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory):
    """A tiny project with everything up to `tokenize` done, shared by the tests below."""
    root = tmp_path_factory.mktemp("train-project")
    env = stage_env(OMP_NUM_THREADS="1")
    make_project(root, env)
    run([DVC, "repro", "tokenize"], root, env)
    return root, env


def pretrain(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "stages.pretrain"], root, env)


def weights(root: Path) -> dict:
    return load_file(root / "models" / "pretrain" / "model.safetensors")


def test_killed_pretrain_resumes_to_identical_weights(tokenized) -> None:
    root, env = tokenized
    set_param(root, "pretrain.train.max_steps", 40)
    set_param(root, "pretrain.train.checkpoint_every", 4)
    shutil.rmtree(root / "checkpoints", ignore_errors=True)
    pretrain(root, env)
    uninterrupted = weights(root)
    shutil.rmtree(root / "checkpoints")
    shutil.rmtree(root / "models" / "pretrain")

    process = subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((root / "checkpoints").glob("pretrain/*/checkpoint.pt")):
        assert process.poll() is None, "pretrain ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (root / "models" / "pretrain").exists()  # killed before finishing

    resumed = pretrain(root, env)
    assert "resumed from step" in resumed.stderr + resumed.stdout
    after = weights(root)
    assert after.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert after[name].equal(tensor), f"{name} differs after resume"

    # Other params: the old checkpoint is not used (and is pruned once the new run finishes).
    old = list((root / "checkpoints" / "pretrain").iterdir())
    set_param(root, "pretrain.train.lr", 0.002)
    fresh = pretrain(root, env)
    assert "resumed from step" not in fresh.stderr + fresh.stdout
    assert list((root / "checkpoints" / "pretrain").iterdir()) != old


def test_pretrain_under_torchrun_matches_one_process(tokenized) -> None:
    """2 gloo processes x micro-batch 4 == 1 process x micro-batch 8: same losses to 1e-5."""
    from mlflow.tracking import MlflowClient

    root, env = tokenized
    set_param(root, "pretrain.train.max_steps", 6)
    set_param(root, "pretrain.train.log_every", 1)
    losses = {}
    for nproc, micro in ((1, 8), (2, 4)):
        set_param(root, "pretrain.nproc", nproc)
        set_param(root, "pretrain.train.micro_batch_size", micro)
        shutil.rmtree(root / "checkpoints", ignore_errors=True)
        output = pretrain(root, env)
        if nproc > 1:
            assert "launching 2 processes" in output.stdout
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        info = (root / "models" / "pretrain" / "mlflow_run.json").read_text()
        run_id = json.loads(info)["run_id"]
        history = client.get_metric_history(run_id, "loss")
        losses[nproc] = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses[1]) == len(losses[2]) == 6
    assert losses[1] == pytest.approx(losses[2], abs=1e-5)
