"""Training curves: recorded for MLflow and DVC, kept across a resume, viewable offline."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.plots import CURVE_LOG, CurveRecorder


def test_curves_survive_a_resume_and_become_plot_files(tmp_path: Path) -> None:
    logged: list[tuple[dict, int]] = []
    first = CurveRecorder(lambda m, s: logged.append((m, s)), tmp_path / "ckpt")
    first({"val_loss": 7.0}, 0)
    for step in (1, 2, 3):
        first({"loss": 8.0 - step, "lr": 0.1}, step)
    first({"val_loss": 5.0}, 3)
    # A resumed run (new process) continues from step 2: it re-logs step 3, then goes on.
    resumed = CurveRecorder(lambda m, s: logged.append((m, s)), tmp_path / "ckpt")
    resumed({"loss": 5.0, "lr": 0.1}, 3)
    resumed({"loss": 4.0, "lr": 0.1}, 4)
    files = resumed.write(tmp_path / "plots", ["loss"], ["val_loss"])

    assert len(logged) == 7  # everything also went to MLflow
    train = json.loads(files[0].read_text())
    assert [(r["step"], r["loss"]) for r in train] == [(1, 7.0), (2, 6.0), (3, 5.0), (4, 4.0)]
    assert json.loads(files[1].read_text()) == [{"step": 0, "val_loss": 7.0},
                                                {"step": 3, "val_loss": 5.0}]
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "ckpt" / CURVE_LOG).exists()
