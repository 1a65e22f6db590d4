"""export_vlm: models/vlm as a self-describing Hugging Face folder, verified by loading it back.

models/export-vlm/ holds the weights, tokenizer, `encoder.json` (the vision encoder the model
reads, with its preprocessing) and a README on loading and serving it; it loads with
`import minimind.model; AutoModelForCausalLM.from_pretrained("models/export-vlm")` and serves
with `python -m minimind.serve --model models/export-vlm`. The stage rebuilds the encoder from
`encoder.json` and fails unless the exported model's logits on an image prompt equal
models/vlm's within 1e-5. (Its own folder: DVC outs may not overlap the text export's.)
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage

SOURCE_DIR = Path("models/vlm")
EXPORT_DIR = Path("models/export-vlm")
METRICS = Path("metrics/export_vlm.json")
TOLERANCE = 1e-5
LOGGED_FILES = ("config.json", "generation_config.json", "encoder.json", "README.md")


def main(ctx: StageContext) -> None:
    from minimind.export.vlm import export_vlm, max_logit_difference

    source, exported = ctx.path(SOURCE_DIR), ctx.path(EXPORT_DIR)
    export_vlm(source, exported)
    difference = max_logit_difference(source, exported)
    if difference > TOLERANCE:
        raise RuntimeError(f"{EXPORT_DIR} disagrees with {SOURCE_DIR}: max logit difference "
                           f"{difference:.2e} > {TOLERANCE:.0e}")
    size_mb = sum(f.stat().st_size for f in exported.iterdir() if f.is_file()) / 1e6
    ctx.write_metrics(METRICS, {"max_logit_diff": difference, "size_mb": round(size_mb, 3)})
    for name in LOGGED_FILES:
        ctx.run.log_artifact(exported / name, "export_vlm")
    print(f"[export_vlm] {EXPORT_DIR} ({size_mb:.1f} MB; logits match {SOURCE_DIR} within "
          f"{difference:.1e}); load: import minimind.model; "
          f"AutoModelForCausalLM.from_pretrained('{EXPORT_DIR}')", flush=True)


if __name__ == "__main__":
    run_stage("export_vlm", main, __doc__, modality="vision")
