"""MLflow conventions: sqlite store, parent grouping, params/metrics, and never crashing."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import pytest

from pipelines.tracking import StageRun


@pytest.fixture
def tracked_root(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return tmp_path


def start(root: Path, stage: str, key: str, params: dict[str, str]) -> StageRun:
    run = StageRun(root, stage, offline_dir=root / ".cache" / "mlflow-offline")
    run.start(key, params, {"git.commit": "c0ffee" * 6, "params.hash": "h-" + stage})
    return run


def test_stage_runs_group_under_one_parent_per_pipeline_key(tracked_root: Path) -> None:
    from mlflow.tracking import MlflowClient

    first = start(tracked_root, "download", "key-A", {"download.retries": "5"})
    first.log_metrics({"bytes": 10.0}, step=1)
    first.end()
    second = start(tracked_root, "clean", "key-A", {"clean.val_fraction": "0.05"})
    second.log_metrics({"records_in": 7.0})
    second.end()
    third = start(tracked_root, "clean", "key-B", {"clean.val_fraction": "0.1"})
    third.end("FAILED")

    assert (tracked_root / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{tracked_root / 'mlflow.db'}")
    assert first.parent_run_id == second.parent_run_id != third.parent_run_id
    run = client.get_run(second.run_id)
    assert run.data.params == {"clean.val_fraction": "0.05"}
    assert run.data.metrics == {"records_in": 7.0}
    assert run.data.tags["stage"] == "clean"
    assert run.data.tags["mlflow.parentRunId"] == second.parent_run_id
    assert run.data.tags["params.hash"] == "h-clean"
    assert run.info.status == "FINISHED"
    assert client.get_run(third.run_id).info.status == "FAILED"
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags["pipeline.role"] == "parent"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (tracked_root / "mlartifacts").resolve().as_uri()
    assert second.info()["run_id"] == second.run_id


def test_tracking_server_down_is_a_warning_and_logs_locally(tracked_root: Path,
                                                            monkeypatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = start(tracked_root, "clean", "key-A", {"clean.seed": "42"})
        run.log_metrics({"records_in": 3.0}, step=2)
        run.end()
    assert any("MLflow tracking failed" in str(w.message) for w in caught)
    assert run.info()["tracking"] == "offline"
    events = [json.loads(line) for line in run.offline_log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "metrics", "end"]
    assert events[0]["params"] == {"clean.seed": "42"}
    assert events[1]["metrics"] == {"records_in": 3.0}
