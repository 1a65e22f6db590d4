"""MLflow conventions: one run per executed stage, grouped under one parent per pipeline version.

- Tracking URI: `$MLFLOW_TRACKING_URI`, else `sqlite:///<repo>/mlflow.db` (MLflow's file store
  is deprecated); artifacts under `<repo>/mlartifacts/`.
- Parent run: found or created by a deterministic key (git commit + hash of all params), so
  every stage executed for one pipeline version lands under the same parent in the UI.
- The pipeline never fails because tracking fails: the first error is reported as a warning
  and from then on params, metrics and tags go to a local JSONL file instead.

mlflow is imported lazily: `python -m stages.<x> --help` must stay fast.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "minimind-pipeline"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def configure_environment() -> None:
    """Telemetry off and short HTTP retries (a dead server must not stall a stage for minutes)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _server_is_up(uri: str) -> bool:
    """Quick health probe for http(s) tracking servers before handing them to MLflow."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


class StageRun:
    """The tracking handle a stage logs through; MLflow-backed, or a local log after a failure."""

    def __init__(self, root: Path, stage: str, offline_dir: Path, muted: bool = False) -> None:
        self.root = root
        self.stage = stage
        self.muted = muted  # torchrun ranks other than 0 log nothing
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.uri = tracking_uri(root)
        self.offline_log = offline_dir / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        self._client: Any = None

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    def attach(cls, root: Path, stage: str, info: dict[str, Any], offline_dir: Path,
               muted: bool = False) -> StageRun:
        """Log into a run another process started (the torchrun launcher's)."""
        run = cls(root, stage, offline_dir, muted=muted)
        if muted:
            return run
        if info.get("run_id") is None:
            run.offline_log = Path(info["offline_log"])
            return run
        configure_environment()
        from mlflow.tracking import MlflowClient

        run.uri, run.run_id = info["tracking_uri"], info["run_id"]
        run.experiment_id, run.parent_run_id = info["experiment_id"], info["parent_run_id"]
        run._client = MlflowClient(tracking_uri=run.uri)
        return run

    def start(self, pipeline_key: str, params: dict[str, str], tags: dict[str, str]) -> None:
        """Create the stage run under the pipeline's parent run."""
        configure_environment()
        self._safely(self._start, pipeline_key, params, tags)
        if self._client is None:
            self._offline({"event": "start", "stage": self.stage, "params": params, "tags": tags})

    def _start(self, pipeline_key: str, params: dict[str, str], tags: dict[str, str]) -> None:
        if self.uri.startswith(("http://", "https://")) and not _server_is_up(self.uri):
            raise ConnectionError(f"tracking server {self.uri} is not answering")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = (self.root / "mlartifacts").resolve().as_uri()
            self.experiment_id = client.create_experiment(name, artifact_location=artifacts)
        else:
            self.experiment_id = experiment.experiment_id
        self.parent_run_id = self._parent(client, pipeline_key, tags)
        run = client.create_run(
            self.experiment_id,
            run_name=self.stage,
            tags={**tags, "stage": self.stage, "pipeline.key": pipeline_key,
                  "mlflow.parentRunId": self.parent_run_id},
        )
        self.run_id = run.info.run_id
        self._client = client
        self.log_params(params)

    def _parent(self, client: Any, pipeline_key: str, tags: dict[str, str]) -> str:
        found = client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`pipeline.key` = '{pipeline_key}' "
                           "and tags.`pipeline.role` = 'parent'"),
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        commit = tags.get("git.commit", "unknown")[:8]
        run = client.create_run(
            self.experiment_id,
            run_name=f"pipeline {commit} {pipeline_key[-8:]}",
            tags={"pipeline.key": pipeline_key, "pipeline.role": "parent",
                  "git.commit": tags.get("git.commit", "unknown")},
        )
        # The parent is a grouping node, not a process: it is finished as soon as it exists.
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def end(self, status: str = "FINISHED") -> None:
        if self._client is not None:
            self._safely(self._client.set_terminated, self.run_id, status)
        else:
            self._offline({"event": "end", "status": status})

    # -- logging -------------------------------------------------------------------------
    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:_MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self._log(lambda chunk=items[i:i + 100]: self._client.log_batch(self.run_id,
                                                                            params=chunk),
                      {"event": "params", "params": params})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}

        def send() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step or 0) for k, v in values.items()]
            self._client.log_batch(self.run_id, metrics=batch)

        self._log(send, {"event": "metrics", "step": step, "metrics": values})

    def set_tags(self, tags: dict[str, str]) -> None:
        def send() -> None:
            from mlflow.entities import RunTag

            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

        self._log(send, {"event": "tags", "tags": tags})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._log(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path),
                  {"event": "artifact", "path": str(path)})

    def info(self) -> dict[str, Any]:
        """What a stage writes beside its outputs, so outputs lead back to their run."""
        if self.run_id is None:
            return {"tracking": "offline", "offline_log": str(self.offline_log),
                    "stage": self.stage}
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id,
                "run_id": self.run_id, "parent_run_id": self.parent_run_id, "stage": self.stage}

    # -- failure handling ----------------------------------------------------------------
    def _log(self, send: Any, record: dict[str, Any]) -> None:
        if self._client is None or not self._safely(send):
            self._offline(record)

    def _safely(self, fn: Any, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # tracking must never take a stage down
            warnings.warn(f"MLflow tracking failed ({type(exc).__name__}: {exc}); "
                          f"logging locally to {self.offline_log}", stacklevel=2)
            self._client = None
            return False

    def _offline(self, record: dict[str, Any]) -> None:
        self.offline_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.offline_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), **record}, default=str) + "\n")
