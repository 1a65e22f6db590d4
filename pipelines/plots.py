"""Training curves: MLflow per-step metrics, DVC plot files, PNGs, and an offline HTML viewer.

`CurveRecorder` is what a training stage hands the Trainer as `log_metrics`: every call goes to
MLflow and is also kept, so the stage can write `plots/<stage>/train.json` and `val.json` (DVC
plots) and a PNG for MLflow at the end. Rows are also appended to the stage's checkpoint
folder, so a resumed run's curve still starts at step 1.

DVC's HTML loads vega from a CDN, which is blank offline; `python -m pipelines.plots` renders
`dvc plots show` with a template whose vega, vega-lite and vega-embed are inlined (fetched once
from the npm registry, at the versions dvc-render targets).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CURVE_LOG = "curve.jsonl"
VEGA_PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
TEMPLATE = Path(".cache/dvc-plots/offline.html")


class CurveRecorder:
    """`log_metrics(metrics, step)` for the Trainer: to MLflow, and kept for plot files."""

    def __init__(self, log: Callable[[dict[str, float], int], None], checkpoint_dir: Path
                 ) -> None:
        self.log = log
        self.path = checkpoint_dir / CURVE_LOG
        self.rows: dict[int, dict[str, float]] = {}
        if self.path.exists():  # a resumed run: keep the curve of the steps already done
            for line in self.path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                self.rows.setdefault(row.pop("step"), {}).update(row)

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.log(metrics, step)
        self.rows.setdefault(step, {}).update(metrics)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")

    def series(self, keys: list[str]) -> list[dict[str, float]]:
        """Rows (sorted by step) that have all of `keys`, with just step and those keys."""
        return [{"step": step, **{k: row[k] for k in keys}}
                for step, row in sorted(self.rows.items()) if all(k in row for k in keys)]

    def write(self, out_dir: Path, train_keys: list[str], val_keys: list[str]) -> list[Path]:
        """Write train.json / val.json (DVC plots) and curves.png; return the written paths."""
        from pipelines.atomic import write_json

        out_dir.mkdir(parents=True, exist_ok=True)
        train, val = self.series(train_keys), self.series(val_keys)
        write_json(out_dir / "train.json", train)
        write_json(out_dir / "val.json", val)
        png = out_dir / "curves.png"
        render_png(train, val, train_keys[0], val_keys[0], png)
        return [out_dir / "train.json", out_dir / "val.json", png]


def finish_curves(ctx: Any, curve: CurveRecorder, train_keys: list[str], val_keys: list[str]
                  ) -> None:
    """Write a stage's plots/<stage>/ files and log the PNG to its MLflow run."""
    written = curve.write(ctx.path(Path("plots") / ctx.name), train_keys, val_keys)
    ctx.run.log_artifact(written[-1], "plots")


def render_png(train: list[dict], val: list[dict], train_key: str, val_key: str,
               path: Path) -> None:
    """A small loss-curve PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot([r["step"] for r in train], [r[train_key] for r in train], label=train_key)
    if val:
        axis.plot([r["step"] for r in val], [r[val_key] for r in val], "o-", label=val_key)
    axis.set_xlabel("step")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def build_offline_template(path: Path = TEMPLATE) -> Path:
    """An HTML template for `dvc plots show --html-template` with the vega scripts inlined."""
    if path.exists():
        return path
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, version in VEGA_PACKAGES.items():
            packed = subprocess.run(["npm", "pack", f"{package}@{version}", "--silent"],
                                    cwd=tmp, capture_output=True, text=True, check=True)
            with tarfile.open(Path(tmp) / packed.stdout.strip().splitlines()[-1]) as archive:
                member = archive.extractfile(f"package/build/{package}.min.js")
                if member is None:
                    raise FileNotFoundError(f"{package}@{version}: no build/{package}.min.js")
                scripts.append(member.read().decode("utf-8"))
    body = "\n".join(f"<script>{script}</script>" for script in scripts)
    html = ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>DVC plots</title>\n"
            f"{body}\n</head>\n<body>\n{{plot_divs}}\n</body>\n</html>\n")
    from pipelines.atomic import write_text

    write_text(path, html)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.plots",
                                     description="Render `dvc plots show` for offline viewing.")
    parser.add_argument("--out", default="plots.html", help="output folder (default: %(default)s)")
    parser.add_argument("dvc_args", nargs="*", help="extra `dvc plots show` arguments")
    args = parser.parse_args(argv)
    template = build_offline_template()
    dvc = str(Path(sys.executable).with_name("dvc"))
    command = [dvc, "plots", "show", "--html-template", str(template), "-o", args.out,
               *args.dvc_args]
    result = subprocess.run(command, check=False)
    if result.returncode == 0:
        print(f"offline plots: {Path(args.out) / 'index.html'}")
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
