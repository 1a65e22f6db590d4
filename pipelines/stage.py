"""The one entry point every `stages/<name>.py` goes through.

It keeps stage modules thin: parse the command line, validate all of params.yaml before any
work, open the stage's MLflow run (params, lineage tags), time the body, write the run id
beside each output directory, and print where the outputs and the run are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.params import Params
    from pipelines.provenance import StageSpec
    from pipelines.tracking import StageRun

RUN_INFO_FILE = "mlflow_run.json"


@dataclass
class StageContext:
    """What a stage body gets: validated params, its dvc.yaml entry, and its tracking run."""

    name: str
    root: Path
    params: Params
    spec: StageSpec
    run: StageRun
    params_hash: str
    identity: str  # hash of own params + input hashes: keys checkpoints, so stale ones never load

    def path(self, relative: str | Path) -> Path:
        return self.root / relative

    def checkpoint_dir(self) -> Path:
        """checkpoints/<stage>/<identity>/: a rerun with the same params and inputs resumes."""
        return self.root / "checkpoints" / self.name / self.identity[:16]

    def write_metrics(self, relative: str | Path, metrics: dict[str, Any]) -> None:
        """Write a DVC metrics JSON file and log its numeric leaves to MLflow."""
        from pipelines.atomic import write_json
        from pipelines.params import flatten

        write_json(self.path(relative), metrics)
        numeric: dict[str, float] = {}
        for key, value in flatten(metrics).items():
            try:
                numeric[key] = float(value)
            except ValueError:
                continue
        self.run.log_metrics(numeric)


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=description)
    parser.add_argument("--params", default="params.yaml",
                        help="params file (default: %(default)s)")
    parser.add_argument("--root", default=".", help="project root holding dvc.yaml (default: .)")
    return parser


WORKER_ENV = "MINIMIND_STAGE_RUN"  # set for torchrun workers: the launcher's run, as JSON


def run_stage(name: str, body: Callable[[StageContext], None], description: str,
              argv: list[str] | None = None,
              processes: Callable[[Params], int] | None = None,
              modality: str | None = None) -> None:
    """Run one pipeline stage: validate, track, time, report. Exits non-zero on bad params.

    `processes(params)` > 1 makes this process a launcher: it owns the MLflow run and starts
    the stage again under torchrun; the workers run `body` and rank 0 logs into the same run.
    `modality` names the `modalities` switch the stage belongs to ("vision", "omni"): when it
    is off, `body` never runs and the stage writes `skipped` placeholders (`write_skipped`).
    """
    args = _parser(name, description).parse_args(argv)
    if not sys.stderr.isatty():  # progress bars in a log file: a line every 30 s, not a flood
        os.environ.setdefault("TQDM_MININTERVAL", "30")  # (read when tqdm is first imported)
    import logging

    from pipelines.atomic import write_json
    from pipelines.params import ParamsError, flatten, load_params, params_hash, select
    from pipelines.provenance import dep_hashes, git_state, read_stage_spec
    from pipelines.tracking import StageRun

    logging.basicConfig(level=logging.WARNING, format=f"[{name}] %(message)s")
    logging.getLogger("minimind").setLevel(logging.INFO)  # ours at INFO, libraries' warnings only
    root = Path(args.root).resolve()
    try:
        params = load_params(root / args.params)
    except ParamsError as exc:
        sys.exit(f"stage {name}: {exc}")
    spec = read_stage_spec(name, root)
    own = select(params, spec.params)
    deps = dep_hashes(spec, root)
    identity = params_hash({"params": own, "deps": deps})
    offline_dir = root / ".cache" / "mlflow-offline"

    def context(run: StageRun) -> StageContext:
        return StageContext(name=name, root=root, params=params, spec=spec, run=run,
                            params_hash=params_hash(own), identity=identity)

    if WORKER_ENV in os.environ:  # a torchrun worker: rank 0 logs into the launcher's run
        run = StageRun.attach(root, name, json.loads(os.environ[WORKER_ENV]), offline_dir,
                              muted=int(os.environ.get("RANK", "0")) != 0)
        body(context(run))
        return

    git = git_state(root)
    pipeline_key = f"{git['commit'][:12]}-{params_hash(params.model_dump(mode='json'))[:16]}"
    run = StageRun(root, name, offline_dir=offline_dir)
    tags = {"git.commit": git["commit"], "git.dirty": git["dirty"],
            "params.hash": params_hash(own), "stage.identity": identity}
    tags.update({f"dvc.dep.{dep}": md5 for dep, md5 in deps.items()})
    skipped = modality is not None and not getattr(params.modalities, modality)
    if skipped:
        tags["stage.skipped"] = "true"
    run.start(pipeline_key, flatten(own), tags)
    if skipped:
        reason = f"modalities.{modality} is false"
        write_skipped(spec, root, reason)
        run.end("FINISHED")
        print(f"[{name}] skipped ({reason}): no work done; placeholder outputs say so in "
              f"{', '.join(spec.outs + spec.metrics)}. MLflow: {_where(run)}", flush=True)
        return
    print(f"[{name}] started; MLflow: {_where(run)}", flush=True)
    nproc = processes(params) if processes is not None else 1
    started = time.perf_counter()
    try:
        if nproc > 1:
            _launch_workers(name, nproc, args, root, run)
        else:
            body(context(run))
    except BaseException as exc:
        run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    seconds = time.perf_counter() - started
    run.log_metrics({"stage_seconds": seconds})
    for out in spec.outs:
        if (root / out).is_dir() and out not in spec.persistent:
            write_json(root / out / RUN_INFO_FILE, run.info())
    run.end("FINISHED")
    print(f"[{name}] done in {seconds:.1f}s; outputs: {', '.join(spec.outs + spec.metrics)}",
          flush=True)
    print(f"[{name}] MLflow: {_where(run)}", flush=True)


SKIPPED_FILE = "SKIPPED.json"


def write_skipped(spec: StageSpec, root: Path, reason: str) -> None:
    """Placeholder outputs of a stage whose modality is switched off, each saying so.

    DVC needs every declared output to exist, and the stages downstream need their deps: an
    output folder gets a SKIPPED.json (as does every dependency path of any stage inside it,
    e.g. data/features/vision), a metrics file `{"skipped": true, "reason": ...}`, a plot data
    file an empty list and a plot image a picture that reads "skipped". Anything a stage
    would read as a real model or dataset is absent, so a downstream stage that wrongly
    runs fails loudly instead of training on nothing.
    """
    from pipelines.atomic import write_json
    from pipelines.provenance import all_deps

    marker = skipped_marker(spec.name, reason)
    outs = [out for out in spec.outs if out not in spec.metrics + spec.plots]
    for out in outs:
        path = root / out
        if path.suffix == ".json":
            write_json(path, marker)
            continue
        if path.is_dir() and out not in spec.persistent:
            shutil.rmtree(path)
        inner = [dep for dep in all_deps(root) if dep.startswith(out.rstrip("/") + "/")]
        for folder in [out, *inner]:
            write_skipped_folder(root / folder, spec.name, reason)
    for metrics in spec.metrics:
        write_json(root / metrics, marker)
    for plot in spec.plots:
        if plot.endswith(".json"):
            write_json(root / plot, [])
        else:
            _skipped_picture(root / plot, f"{spec.name}: skipped ({reason})")


def skipped_marker(stage: str, reason: str) -> dict[str, Any]:
    return {"skipped": True, "reason": reason, "stage": stage}


def write_skipped_folder(path: Path, stage: str, reason: str) -> None:
    """A folder holding only SKIPPED.json: a dependency path that exists, with no data."""
    from pipelines.atomic import write_json

    path.mkdir(parents=True, exist_ok=True)
    write_json(path / SKIPPED_FILE, skipped_marker(stage, reason))


def _skipped_picture(path: Path, text: str) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (480, 60), "white")
    ImageDraw.Draw(image).text((10, 22), text, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _launch_workers(name: str, nproc: int, args: argparse.Namespace, root: Path,
                    run: StageRun) -> None:
    """Run the stage in `nproc` processes under torchrun (DDP: gloo on CPU, nccl on GPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", f"stages.{name}",
               "--params", args.params, "--root", str(root)]
    print(f"[{name}] launching {nproc} processes: {' '.join(command[1:])}", flush=True)
    env = {**os.environ, WORKER_ENV: json.dumps(run.info())}
    subprocess.run(command, cwd=root, env=env, check=True)


def _where(run: StageRun) -> str:
    info = run.info()
    if info.get("run_id") is None:
        return f"offline, logged to {os.path.relpath(info['offline_log'])}"
    return (f"run {info['run_id']} in experiment {info['experiment_id']} at {info['tracking_uri']}"
            " (browse: make mlflow-ui)")
