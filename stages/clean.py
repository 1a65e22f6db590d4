"""clean: raw downloads -> validated, normalised, quality-filtered, deduplicated Parquet shards.

Outputs: data/clean/<kind>/<split>-NNNNN.parquet, data/clean/rejects.jsonl (every dropped
record with its file:line and reason) and metrics/clean.json (counts per rule, per source).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.stage import StageContext, run_stage

RAW_DIR = Path("data/raw")
CLEAN_DIR = Path("data/clean")
REPORT = Path("metrics/clean.json")


def main(ctx: StageContext) -> None:
    from minimind.data.cleaning import clean_corpus
    from pipelines.atomic import atomic_dir

    manifest = json.loads(ctx.path(RAW_DIR / "manifest.json").read_text(encoding="utf-8"))
    with atomic_dir(ctx.path(CLEAN_DIR)) as out_dir:
        report = clean_corpus(manifest["sources"], ctx.path(RAW_DIR), out_dir, ctx.params.clean)
    ctx.write_metrics(REPORT, report)
    ctx.run.log_artifact(ctx.path(REPORT))
    print(f"[clean] {report['records_in']} records in, {report['docs_out']} docs out, "
          f"{report['records_rejected']} rejected ({report['records_per_s']:.0f} records/s); "
          f"reasons: {report['rejects_by_reason']}; rejects: {CLEAN_DIR / 'rejects.jsonl'}",
          flush=True)


if __name__ == "__main__":
    run_stage("clean", main, __doc__)
