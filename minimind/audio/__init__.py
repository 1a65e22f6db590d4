"""Speech out: HiFi-GAN log-mels, the pretrained vocoder, the residual-VQ codec (and Mimi),
Piper test speech and the pocketsphinx intelligibility judge.

`load_codec(kind, source)` resolves params to a codec; heavy packages load lazily.
"""

from minimind.audio.codec import CODECS, MimiCodec, RvqMelCodec, SpeechCodec, load_codec
from minimind.audio.rvq import ResidualVQ, RVQConfig

__all__ = ["CODECS", "MimiCodec", "RVQConfig", "ResidualVQ", "RvqMelCodec", "SpeechCodec",
           "load_codec"]
