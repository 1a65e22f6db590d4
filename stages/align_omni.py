"""align_omni: teach the VLM to listen, from cached audio features (MiniMind-O's Thinker).

Grows models/vlm into the omni model (every VLM weight copied bit for bit, a fresh audio
projector; see minimind.model.omni), then trains it in two phases like align does for images:
phase 1 the audio projector alone (the LLM and the vision projector frozen, and checked
bit-identical afterwards) on `align_omni.phase1.sources`, so audio tokens land where the LLM's
embeddings live; phase 2 both projectors and the LLM layers `align_omni.phase2.llm_layers`
chooses on `align_omni.phase2.sources`: spoken questions about images, transcriptions, and
text VQA kept in the mix so the one model still answers typed questions. Sources are vlm or
omni ones; each is read from its kind's clean folder. Training reads data/features only (no
encoder runs). Writes models/omni/ (a Hugging Face folder; `AutoModelForCausalLM` loads it
after `import minimind.model`) and metrics/align_omni.json, per phase as align.json.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean")
VISION_FEATURES = Path("data/features/vision")
AUDIO_FEATURES = Path("data/features/audio")
BASE_DIR = Path("models/vlm")
MODEL_DIR = Path("models/omni")
METRICS = Path("metrics/align_omni.json")


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoTokenizer

    from minimind.data.features import FeatureStore
    from minimind.data.vlm_tokens import AUDIO_PAD, VLMDataset
    from minimind.model.omni import AUDIO_PROJECTOR_PREFIX, MiniMindOmni
    from minimind.model.vlm import PROJECTOR_PREFIX, MiniMindVLM, trainable_filter
    from pipelines.alignment import (
        finish_alignment,
        projector_lr_scale,
        read_media_rows,
        train_phase,
    )
    from pipelines.plots import CurveRecorder

    opts = ctx.params.align_omni
    kinds = {source.name: source.kind for source in ctx.params.data.sources}
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(BASE_DIR))
    vision = FeatureStore(ctx.path(VISION_FEATURES))
    if not ctx.path(AUDIO_FEATURES).is_dir():
        raise FileNotFoundError(f"{AUDIO_FEATURES} does not exist: the omni path needs an omni "
                                "source in data.sources (e.g. builtin:scene_speech)")
    audio = FeatureStore(ctx.path(AUDIO_FEATURES))
    vlm = MiniMindVLM.from_pretrained(ctx.path(BASE_DIR), dtype=torch.float32)
    torch.manual_seed(opts.phase1.train.seed)  # the audio projector's initial weights
    model = MiniMindOmni.from_vlm(vlm, audio.feature_dim,
                                  tokenizer.convert_tokens_to_ids(AUDIO_PAD), audio.encoder)
    before = {key: value.clone() for key, value in vlm.state_dict().items()}
    del vlm
    print(f"[align_omni] {audio.encoder.get('encoder')}: {audio.feature_dim} per audio token "
          f"({audio.encoder.get('tokens_per_second', 0):.1f}/s); audio projector "
          f"{sum(p.numel() for p in model.audio_projector.parameters()) / 1e6:.2f}M parameters",
          flush=True)
    curve = CurveRecorder(ctx.run.log_metrics, ctx.checkpoint_dir())

    def splits(sources: list[str]) -> dict[str, VLMDataset]:
        return {split: VLMDataset.from_rows(
                    read_media_rows(ctx.path(CLEAN_DIR), split, sources, kinds), tokenizer,
                    vision, opts.max_len, desc=f"tokenize {split}", audio_features=audio)
                for split in ("train", "val")}

    metrics = {"phase1": train_phase(
        ctx, "phase1", model, opts.phase1,
        trainable_filter(model.config, "none", projectors=(AUDIO_PROJECTOR_PREFIX,)),
        splits(opts.phase1.sources), opts.eval_rows, curve, 0)}
    after = model.state_dict()
    unchanged = all(torch.equal(value, after[key].to(value.device))
                    for key, value in before.items())
    if not unchanged:
        raise RuntimeError("the LLM or the vision projector changed during phase 1, which must "
                           "train the audio projector only")
    metrics["phase1"]["vlm_unchanged"] = unchanged
    del before
    projectors = (PROJECTOR_PREFIX, AUDIO_PROJECTOR_PREFIX)
    metrics["phase2"] = train_phase(
        ctx, "phase2", model, opts.phase2,
        trainable_filter(model.config, opts.phase2.llm_layers, opts.phase2.train_embeddings,
                         projectors=projectors),
        splits(opts.phase2.sources), opts.eval_rows, curve, metrics["phase1"]["steps"],
        projector_lr_scale(opts.phase2, projectors))
    finish_alignment(ctx, model, tokenizer, metrics, curve, MODEL_DIR, METRICS)


if __name__ == "__main__":
    run_stage("align_omni", main, __doc__, modality="omni")
