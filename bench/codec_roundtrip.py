"""Speech codec round trip: pocketsphinx WER of original TTS speech, of HiFi-GAN on its mel
(the vocoder's ceiling) and of rvq-mel codes -> HiFi-GAN, on held-out sentences.

Train and eval sentences are disjoint scene captions spoken by the Piper voice. Prints WER
and CER per condition, log-mel MSE per number of quantisers, bits/s and timings (vocoder
speed as x real time: seconds of audio per second of compute).

    python bench/codec_roundtrip.py                       # 40 eval, 200 train sentences
    python bench/codec_roundtrip.py --sentences 20 --stack 3 --quantizers 8
"""

from __future__ import annotations

import argparse
import time

import torch

from minimind.audio.asr import PocketSphinx, error_rate
from minimind.audio.codec import RvqMelCodec
from minimind.audio.rvq import RVQConfig
from minimind.audio.tts import PiperSpeaker, scene_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=40, help="held-out eval sentences")
    parser.add_argument("--train-sentences", type=int, default=200)
    parser.add_argument("--stack", type=int, default=2, help="mel frames per code step")
    parser.add_argument("--quantizers", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=512)
    parser.add_argument("--kmeans-iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts = scene_sentences(args.sentences + args.train_sentences, seed=args.seed)
    eval_texts, train_texts = texts[:args.sentences], texts[args.sentences:]
    speaker = PiperSpeaker()
    start = time.perf_counter()
    train = [speaker.speak(t) for t in train_texts]
    evals = [speaker.speak(t) for t in eval_texts]
    tts_s = time.perf_counter() - start
    sr = speaker.sample_rate
    seconds = sum(len(w) for w in train + evals) / sr
    print(f"TTS: {len(texts)} sentences, {seconds:.0f} s of speech in {tts_s:.1f} s")

    config = RVQConfig(num_quantizers=args.quantizers, codebook_size=args.codebook_size,
                       stack=args.stack, kmeans_iters=args.kmeans_iters, seed=args.seed)
    start = time.perf_counter()
    codec = RvqMelCodec.train([(w, sr) for w in train], config)
    print(f"RVQ fit: {sum(len(w) for w in train) / sr:.0f} s of speech, "
          f"{time.perf_counter() - start:.1f} s; {codec.frame_rate:.1f} steps/s x Q "
          f"{codec.num_quantizers} x K {codec.codebook_size} = {codec.bits_per_second:.0f} bit/s")

    mels = [codec.mel(w, sr) for w in evals]
    train_mels = [codec.mel(w, sr) for w in train[:len(evals)]]
    for q in range(1, args.quantizers + 1):
        print(f"  log-mel MSE with {q} quantisers: held-out "
              f"{codec.rvq.reconstruction_error(mels, q):.3f}, "
              f"train {codec.rvq.reconstruction_error(train_mels, q):.3f}")

    asr = PocketSphinx()
    hyps: dict[str, list[str]] = {"tts": [], "hifigan(mel)": [], "rvq->hifigan": []}
    vocoder_s = audio_s = encode_s = 0.0
    for wave, mel in zip(evals, mels, strict=True):
        start = time.perf_counter()
        codes = codec.encode(wave, sr)
        encode_s += time.perf_counter() - start
        start = time.perf_counter()
        ceiling = codec.vocoder(mel)
        vocoder_s += time.perf_counter() - start
        audio_s += len(ceiling) / codec.sample_rate
        hyps["tts"].append(asr.transcribe(wave, sr))
        hyps["hifigan(mel)"].append(asr.transcribe(ceiling, codec.sample_rate))
        hyps["rvq->hifigan"].append(asr.transcribe(codec.decode(codes), codec.sample_rate))
    print(f"encode: {audio_s / encode_s:.0f}x real time; HiFi-GAN on CPU "
          f"({torch.get_num_threads()} threads): {audio_s / vocoder_s:.2f}x real time")
    print(f"pocketsphinx on {len(evals)} held-out sentences ({audio_s:.0f} s):")
    for name, hyp in hyps.items():
        print(f"  {name:14s} WER {error_rate(eval_texts, hyp):.3f}  "
              f"CER {error_rate(eval_texts, hyp, 'char'):.3f}")
    gap = error_rate(eval_texts, hyps["rvq->hifigan"]) - error_rate(eval_texts, hyps["tts"])
    print(f"WER gap rvq->hifigan minus tts: {gap:+.3f}")
    for text, *rest in list(zip(eval_texts, *hyps.values(), strict=True))[:5]:
        print(f"  ref: {text}\n    " + "\n    ".join(rest))


if __name__ == "__main__":
    main()
