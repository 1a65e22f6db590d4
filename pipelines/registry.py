"""Logging the exported chat model to MLflow and registering it with the pipeline's lineage."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from pipelines.stage import StageContext

PYFUNC_CODE = Path(__file__).with_name("chat_pyfunc.py")


def lineage_tags(ctx: StageContext) -> dict[str, str]:
    """git commit, this stage's params hash and identity, and every DVC stage's output hash."""
    from pipelines.provenance import git_state

    tags = {"git.commit": git_state(ctx.root)["commit"], "params.hash": ctx.params_hash,
            "stage.identity": ctx.identity}
    lock = ctx.root / "dvc.lock"
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        for name, stage in stages.items():
            for out in stage.get("outs", []):
                tags[f"dvc.{name}.{out['path']}"] = out.get("md5", "")
    return tags


def register_chat_model(ctx: StageContext, hf_dir: Path, name: str) -> str | None:
    """Log `hf_dir` as a pyfunc chat model in the stage's run, register it, load it back.

    Returns the registered version, or None when tracking is offline (with a warning).
    """
    if ctx.run.run_id is None:
        warnings.warn("MLflow tracking is offline: the model is exported but not registered",
                      stacklevel=2)
        return None
    import mlflow
    import tokenizers
    import torch
    import transformers
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(ctx.run.uri)
    requirements = [f"torch=={torch.__version__.split('+')[0]}",
                    f"transformers=={transformers.__version__}",
                    f"tokenizers=={tokenizers.__version__}", "safetensors"]
    with mlflow.start_run(run_id=ctx.run.run_id):
        info = mlflow.pyfunc.log_model(name="chat_model", python_model=str(PYFUNC_CODE),
                                       artifacts={"hf_model": str(hf_dir)},
                                       pip_requirements=requirements,
                                       model_config={"max_new_tokens": 64},
                                       registered_model_name=name)
    version = str(info.registered_model_version)
    client = MlflowClient(ctx.run.uri)
    for key, value in lineage_tags(ctx).items():
        client.set_model_version_tag(name, version, key, value)
    reply = mlflow.pyfunc.load_model(f"models:/{name}/{version}",
                                     model_config={"max_new_tokens": 8}).predict(["Hello!"])
    if not (isinstance(reply, list) and len(reply) == 1 and isinstance(reply[0], str)):
        raise RuntimeError(f"registered model {name} v{version} did not generate: {reply!r}")
    return version
