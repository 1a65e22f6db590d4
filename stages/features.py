"""features: frozen encoders over every unique clean image and clip, once -> float16 feature caches.

Reads data/clean/images (each unique image once, keyed by sha256) and writes
data/features/vision/: shard-NNNNN.npy ([rows, N, D] float16), index.parquet (sha256 ->
shard, row) and encoder.json (the encoder, N, D and preprocessing: what reloads it at serving
time). Training reads these features only, so the encoder never runs in a training step, and
changing `features.vision` reruns this stage and what follows it, nothing upstream.
When clean stored audio (an omni source), the audio encoder (`features.audio`) runs once per
unique clip of data/clean/audio into data/features/audio/, a ragged cache (variable tokens per
clip, see minimind.data.features); with no clip it does not run and writes nothing, and with
`modalities.omni` off data/features/audio holds only a SKIPPED.json.
metrics/features.json holds the counts and the encoders' throughput.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage, skipped_marker, write_skipped_folder

CLEAN_IMAGES = Path("data/clean/images")
CLEAN_AUDIO = Path("data/clean/audio")
FEATURES_DIR = Path("data/features")
METRICS = Path("metrics/features.json")


def main(ctx: StageContext) -> None:
    from minimind.data.features import write_features
    from minimind.data.images import iter_clean_images
    from minimind.encoders import load_vision_encoder
    from minimind.training.trainer import default_device
    from pipelines.atomic import atomic_dir

    opts = ctx.params.features.vision
    device = default_device() if opts.device == "auto" else opts.device
    encoder = load_vision_encoder(opts.encoder, device=device)
    with atomic_dir(ctx.path(FEATURES_DIR)) as out_dir:
        stats = write_features(iter_clean_images(ctx.path(CLEAN_IMAGES)), encoder,
                               out_dir / "vision", batch_size=opts.batch_size)
        if ctx.params.modalities.omni:
            audio = encode_audio(ctx, out_dir / "audio")
        else:  # the omni stages still need their dependency path to exist
            audio = skipped_marker("features", "modalities.omni is false")
            write_skipped_folder(out_dir / "audio", "features", audio["reason"])
    ctx.write_metrics(METRICS, {"vision": stats, **({"audio": audio} if audio else {})})
    print(f"[features] {stats['unique_images']:,} unique images ({stats['duplicates_skipped']} "
          f"repeats skipped) -> {stats['num_tokens']} x {stats['feature_dim']} tokens each with "
          f"{opts.encoder} on {device} ({stats['images_per_s']:.1f} images/s); "
          f"written to {FEATURES_DIR / 'vision'}", flush=True)



def encode_audio(ctx: StageContext, out_dir: Path) -> dict | None:
    """Run `features.audio` over the clean clips into out_dir; None (and no encoder load)
    when clean stored none."""
    from minimind.data.audio import AUDIO_PREFIX
    from minimind.data.shards import shard_paths

    if not shard_paths(ctx.path(CLEAN_AUDIO), AUDIO_PREFIX):
        return None
    from minimind.data.audio import iter_clean_audio
    from minimind.data.features import write_audio_features
    from minimind.encoders.audio import load_audio_encoder
    from minimind.training.trainer import default_device

    opts = ctx.params.features.audio
    device = default_device() if opts.device == "auto" else opts.device
    encoder = load_audio_encoder(opts.encoder, device=device)
    stats = write_audio_features(iter_clean_audio(ctx.path(CLEAN_AUDIO)), encoder, out_dir,
                                 batch_size=opts.batch_size)
    print(f"[features] {stats['unique_clips']:,} unique clips ({stats['audio_seconds']:.0f} s, "
          f"{stats['duplicates_skipped']} repeats skipped) -> {stats['tokens']:,} tokens x "
          f"{stats['feature_dim']} with {opts.encoder} on {device} "
          f"({stats['audio_seconds_per_s']:.0f} s of audio/s); written to "
          f"{FEATURES_DIR / 'audio'}", flush=True)
    return stats


if __name__ == "__main__":
    run_stage("features", main, __doc__, modality="vision")
