"""eval_omni: the omni model on held-out speech, and on typed questions, as one model.

Audio in (`eval_omni.sources`, clean omni val split): ASR CER/WER of the transcription turns
beside the audio-blind baseline (the best constant reply), and spoken questions about images
scored per kind beside chance and the train split's majority answer (see minimind.omni_eval).
Text in (`eval_omni.text_sources`, clean vlm val split): the same model answers typed
questions about images, scored exactly as eval_vlm scores models/vlm (minimind.vlm_eval:
kinds and choices from the records' `answer_types` / `answer_choices`, the length fallback
at `eval_omni.short_answer_words` words otherwise, majority baselines from the train split;
short answers get `answer_max_new_tokens` tokens, `open` ones `max_new_tokens`), so text,
image and audio input are shown to go through one model. Writes metrics/eval_omni.json and
metrics/omni_samples.json (replies beside references per task), both logged to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean")
VISION_FEATURES = Path("data/features/vision")
AUDIO_FEATURES = Path("data/features/audio")
MODEL_DIR = Path("models/omni")
METRICS = Path("metrics/eval_omni.json")
SAMPLES = Path("metrics/omni_samples.json")


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoTokenizer

    from minimind.data.features import FeatureStore
    from minimind.data.vlm_tokens import read_vlm_rows
    from minimind.evaluation import spread
    from minimind.model.omni import MiniMindOmni
    from minimind.omni_eval import evaluate_omni
    from minimind.training.trainer import default_device
    from minimind.vlm_eval import describe, evaluate_vqa
    from pipelines.atomic import write_json

    opts = ctx.params.eval_omni
    clean = ctx.path(CLEAN_DIR)
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(MODEL_DIR))
    model = MiniMindOmni.from_pretrained(ctx.path(MODEL_DIR), dtype=torch.float32)
    model = model.to(default_device()).eval()
    vision, audio = FeatureStore(ctx.path(VISION_FEATURES)), FeatureStore(ctx.path(AUDIO_FEATURES))
    held_out = spread(read_vlm_rows(clean / "omni", "val", opts.sources), opts.max_records)
    metrics: dict[str, Any] = evaluate_omni(
        model, tokenizer, held_out, read_vlm_rows(clean / "omni", "train", opts.sources),
        vision, audio, opts.max_new_tokens, opts.batch_size, opts.samples,
        opts.short_answer_words)
    samples = metrics.pop("samples")
    text_rows = spread(read_vlm_rows(clean / "vlm", "val", opts.text_sources), opts.max_records)
    metrics["text_vqa"] = evaluate_vqa(
        model, tokenizer, text_rows, read_vlm_rows(clean / "vlm", "train", opts.text_sources),
        vision, max_new_tokens=opts.answer_max_new_tokens,
        open_max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
        short_answer_words=opts.short_answer_words)
    write_json(ctx.path(SAMPLES), samples)
    ctx.write_metrics(METRICS, metrics)
    for path in (METRICS, SAMPLES):
        ctx.run.log_artifact(ctx.path(path))
    if asr := metrics.get("asr"):
        print(f"[eval_omni] ASR on {asr['clips']} held-out clips: CER {asr['cer']:.3f}, WER "
              f"{asr['wer']:.3f}; audio-blind baseline CER {asr['baseline']['cer']:.3f}, WER "
              f"{asr['baseline']['wer']:.3f} (reply {asr['baseline']['reply']!r})", flush=True)
    for name in ("spoken_vqa", "text_vqa"):
        for kind, score in metrics[name].items():
            print(f"[eval_omni] {name} {describe(kind, score)}", flush=True)
    print(f"[eval_omni] samples in {SAMPLES}", flush=True)


if __name__ == "__main__":
    run_stage("eval_omni", main, __doc__, modality="omni")
