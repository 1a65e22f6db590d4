"""features: a frozen vision encoder over every unique clean image, once -> float16 feature cache.

Reads data/clean/images (each unique image once, keyed by sha256) and writes
data/features/vision/: shard-NNNNN.npy ([rows, N, D] float16), index.parquet (sha256 ->
shard, row) and encoder.json (the encoder, N, D and preprocessing: what reloads it at serving
time). Training reads these features only, so the encoder never runs in a training step, and
changing `features.vision` reruns this stage and what follows it, nothing upstream.
metrics/features.json holds image counts and the encoder's throughput.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage

CLEAN_IMAGES = Path("data/clean/images")
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
    ctx.write_metrics(METRICS, {"vision": stats})
    print(f"[features] {stats['unique_images']:,} unique images ({stats['duplicates_skipped']} "
          f"repeats skipped) -> {stats['num_tokens']} x {stats['feature_dim']} tokens each with "
          f"{opts.encoder} on {device} ({stats['images_per_s']:.1f} images/s); "
          f"written to {FEATURES_DIR / 'vision'}", flush=True)


if __name__ == "__main__":
    run_stage("features", main, __doc__)
