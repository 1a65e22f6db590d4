"""align: teach the SFT model to see, from cached image features (MiniMind-V's two phases).

Phase 1 trains the projector alone (the LLM frozen, and checked bit-identical afterwards) on
`align.phase1.sources`, so image features land where the LLM's embeddings live. Phase 2 trains
the projector with the LLM layers `align.phase2.llm_layers` chooses on
`align.phase2.sources` (question answering). Training reads data/features/vision only: no
encoder runs here. Each phase checkpoints to its own folder under checkpoints/align/<identity>/,
so a killed run resumes inside the phase it died in. Writes models/vlm/ (a Hugging Face folder:
config, safetensors, tokenizer; `AutoModelForCausalLM` loads it after `import minimind.model`)
and metrics/align.json: per phase the held-out loss before and after, the final training loss,
records, tokens and seconds.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean/vlm")
FEATURES_DIR = Path("data/features/vision")
BASE_DIR = Path("models/sft")
MODEL_DIR = Path("models/vlm")
METRICS = Path("metrics/align.json")


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoTokenizer

    from minimind.data.features import FeatureStore
    from minimind.data.vlm_tokens import IMAGE_PAD, VLMDataset
    from minimind.model.vlm import (
        PROJECTOR_PREFIX,
        MiniMindVLM,
        load_language_model,
        trainable_filter,
    )
    from pipelines.alignment import finish_alignment, projector_lr_scale, train_phase
    from pipelines.plots import CurveRecorder

    opts = ctx.params.align
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(BASE_DIR))
    store = FeatureStore(ctx.path(FEATURES_DIR))
    llm = load_language_model(ctx.path(BASE_DIR))
    torch.manual_seed(opts.phase1.train.seed)  # the projector's initial weights
    model = MiniMindVLM.from_language_model(
        llm, store.feature_dim, store.num_tokens, tokenizer.convert_tokens_to_ids(IMAGE_PAD),
        store.encoder)
    print(f"[align] {store.encoder.get('encoder')}: {store.num_tokens} tokens x "
          f"{store.feature_dim} per image; projector "
          f"{sum(p.numel() for p in model.projector.parameters()) / 1e6:.2f}M parameters",
          flush=True)
    curve = CurveRecorder(ctx.run.log_metrics, ctx.checkpoint_dir())

    def splits(sources: list[str]) -> dict[str, VLMDataset]:
        return {split: VLMDataset.from_clean(ctx.path(CLEAN_DIR), split, tokenizer, store,
                                             opts.max_len, sources)
                for split in ("train", "val")}

    metrics = {"phase1": train_phase(ctx, "phase1", model, opts.phase1,
                                     trainable_filter(model.config, "none"),
                                     splits(opts.phase1.sources), opts.eval_rows, curve, 0)}
    unchanged = all(torch.equal(value, llm.state_dict()[key].to(value.device))
                    for key, value in model.language_model.state_dict().items())
    if not unchanged:
        raise RuntimeError("the LLM changed during phase 1, which must train the projector only")
    metrics["phase1"]["llm_unchanged"] = unchanged
    del llm
    metrics["phase2"] = train_phase(
        ctx, "phase2", model, opts.phase2,
        trainable_filter(model.config, opts.phase2.llm_layers, opts.phase2.train_embeddings),
        splits(opts.phase2.sources), opts.eval_rows, curve, metrics["phase1"]["steps"],
        projector_lr_scale(opts.phase2, (PROJECTOR_PREFIX,)))
    finish_alignment(ctx, model, tokenizer, metrics, curve, MODEL_DIR, METRICS)


if __name__ == "__main__":
    run_stage("align", main, __doc__, modality="vision")
