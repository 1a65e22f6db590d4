"""export: the final text model as a Hugging Face Qwen3 folder, a GGUF file and a registered
MLflow model — each verified by loading it back.

models/export/hf/ loads with plain `AutoModelForCausalLM.from_pretrained` (no remote code);
models/export/gguf/minimind.gguf is for llama.cpp; the MLflow model (pyfunc, generates replies)
is registered as `export.registered_model_name` with the pipeline's lineage as version tags.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage

SOURCE_DIR = Path("models/dpo")
EXPORT_DIR = Path("models/export")
METRICS = Path("metrics/export.json")


def max_logit_difference(source: Path, exported: Path) -> float:
    """Largest |logit| difference between our model and the exported one on a fixed prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import minimind.model  # noqa: F401 - registers MiniMind for the source folder

    tokenizer = AutoTokenizer.from_pretrained(exported)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "你好, who are you?"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(source)(input_ids=ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(exported)(input_ids=ids).logits
    return float((ours - theirs).abs().max())


def main(ctx: StageContext) -> None:
    from minimind.export import export_gguf, export_hf
    from pipelines.atomic import atomic_dir
    from pipelines.registry import register_chat_model

    opts = ctx.params.export
    source = ctx.path(SOURCE_DIR)
    with atomic_dir(ctx.path(EXPORT_DIR)) as out:
        hf_dir = export_hf(source, out / "hf")
        if opts.gguf:
            export_gguf(hf_dir, out / "gguf" / "minimind.gguf", dtype=opts.gguf_dtype)
    hf_dir = ctx.path(EXPORT_DIR / "hf")
    metrics: dict = {"hf_max_logit_diff": max_logit_difference(source, hf_dir)}
    if metrics["hf_max_logit_diff"] > 1e-4:
        raise RuntimeError(f"exported model disagrees with {source}: max logit difference "
                           f"{metrics['hf_max_logit_diff']:.2e}")
    if opts.gguf:
        metrics["gguf_mb"] = round(
            ctx.path(EXPORT_DIR / "gguf" / "minimind.gguf").stat().st_size / 1e6, 3)
    version = register_chat_model(ctx, hf_dir, opts.registered_model_name)
    if version is not None:
        metrics["registered_version"] = int(version)
    ctx.write_metrics(METRICS, metrics)
    print(f"[export] {EXPORT_DIR}/hf (logits match within {metrics['hf_max_logit_diff']:.1e}), "
          f"GGUF: {opts.gguf}, MLflow model: {opts.registered_model_name} v{version}", flush=True)


if __name__ == "__main__":
    run_stage("export", main, __doc__)
