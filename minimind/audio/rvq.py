"""A residual vector quantiser over log-mel frames: the offline speech codec's discrete units.

Each code step covers `stack` consecutive mel frames (concatenated into one vector of
n_mels * stack values, after per-mel-bin standardisation), so the code rate is
frame_rate / stack: 43 steps/s for stack 2 at HiFi-GAN's 86.1 frames/s. Stage q quantises
what stages 0..q-1 left over, so a code step is Q integers in [0, K) and `decode` of the first
q columns is a coarser reconstruction: the Talker can predict coarse codes first.

Training is plain k-means, no gradients: stage by stage on the residuals (random distinct
training vectors as initial centroids, Lloyd iterations, empty clusters re-seeded with the
worst-fit vectors), then `refine_rounds` passes of greedy residual encoding through all
stages with every centroid moved to the mean of the residuals assigned to it, which keeps
training consistent with how `encode` assigns codes. Everything is seeded, CPU-deterministic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE, WEIGHTS_FILE = "rvq.json", "rvq.safetensors"
FORMAT = "minimind-rvq-mel/1"
_CHUNK = 8192  # vectors per distance block: bounds memory at CHUNK x K floats


@dataclass(frozen=True)
class RVQConfig:
    num_quantizers: int = 4
    codebook_size: int = 512
    stack: int = 2  # mel frames per code step
    kmeans_iters: int = 20
    refine_rounds: int = 2
    max_train_vectors: int = 100_000  # a seeded random subset beyond this
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_quantizers", "codebook_size", "stack", "max_train_vectors"):
            if getattr(self, name) < 1:
                raise ValueError(f"RVQConfig.{name} must be >= 1, got {getattr(self, name)}")


class ResidualVQ:
    """Codebooks [Q, K, n_mels * stack] plus the per-mel-bin mean/std they work in."""

    def __init__(self, config: RVQConfig, mean: torch.Tensor, std: torch.Tensor,
                 codebooks: torch.Tensor) -> None:
        self.config, self.mean, self.std = config, mean.float(), std.float()
        self.codebooks = codebooks.float()
        self.n_mels = int(mean.numel())
        expected = (config.num_quantizers, config.codebook_size, self.n_mels * config.stack)
        if tuple(self.codebooks.shape) != expected:
            raise ValueError(f"codebooks have shape {tuple(self.codebooks.shape)}, "
                             f"config says {expected}")

    # --- training ------------------------------------------------------------------------

    @classmethod
    def fit(cls, mels: Sequence[torch.Tensor], config: RVQConfig) -> ResidualVQ:
        """Train on log-mels [n_mels, T_i] (one per utterance)."""
        if not mels:
            raise ValueError("ResidualVQ.fit needs at least one mel spectrogram")
        frames = torch.cat([m.float().T for m in mels])  # [sum T, n_mels]
        mean, std = frames.mean(0), frames.std(0).clamp_min(1e-3)
        rvq = cls(config, mean, std, torch.zeros(config.num_quantizers, config.codebook_size,
                                                 mean.numel() * config.stack))
        vectors = torch.cat([rvq._vectors(m) for m in mels])
        generator = torch.Generator().manual_seed(config.seed)
        if len(vectors) > config.max_train_vectors:
            keep = torch.randperm(len(vectors), generator=generator)[:config.max_train_vectors]
            vectors = vectors[keep.sort().values]
        if len(vectors) < config.codebook_size:
            raise ValueError(f"ResidualVQ.fit: {len(vectors)} code steps of training speech "
                             f"cannot fill a codebook of {config.codebook_size}; give more "
                             "speech or a smaller codebook_size")
        residual = vectors.clone()
        for q in range(config.num_quantizers):
            rvq.codebooks[q] = _kmeans(residual, config.codebook_size, config.kmeans_iters,
                                       generator)
            residual -= rvq.codebooks[q][_nearest(residual, rvq.codebooks[q])]
        for _ in range(config.refine_rounds):
            residual = vectors.clone()
            for q in range(config.num_quantizers):
                codes = _nearest(residual, rvq.codebooks[q])
                _move_to_means(rvq.codebooks[q], residual, codes)
                residual -= rvq.codebooks[q][codes]
        return rvq

    # --- coding --------------------------------------------------------------------------

    def _vectors(self, mel: torch.Tensor) -> torch.Tensor:
        """Standardised, stacked frames [S, n_mels * stack]; the last step repeats the last
        frame to fill the stack."""
        mel = torch.as_tensor(mel, dtype=torch.float32)
        if mel.ndim != 2 or mel.shape[0] != self.n_mels or mel.shape[1] == 0:
            raise ValueError(f"expected a log-mel [{self.n_mels}, T>0], got {tuple(mel.shape)}")
        frames = (mel.T - self.mean) / self.std
        short = -len(frames) % self.config.stack
        if short:
            frames = torch.cat([frames, frames[-1:].expand(short, -1)])
        return frames.reshape(-1, self.n_mels * self.config.stack)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Codes int64 [S, Q] of a log-mel [n_mels, T], S = ceil(T / stack)."""
        residual = self._vectors(mel)
        codes = []
        for codebook in self.codebooks:
            codes.append(_nearest(residual, codebook))
            residual = residual - codebook[codes[-1]]
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Log-mel [n_mels, S * stack] of codes [S, q]; q <= Q uses the first q stages."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        q = codes.shape[-1] if codes.ndim == 2 else 0
        if codes.ndim != 2 or not 1 <= q <= self.config.num_quantizers:
            raise ValueError(f"expected codes [S, 1..{self.config.num_quantizers}], "
                             f"got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size})")
        vectors = sum(self.codebooks[i][codes[:, i]] for i in range(q))
        frames = vectors.reshape(-1, self.n_mels) * self.std + self.mean
        return frames.T.contiguous()

    def reconstruction_error(self, mels: Sequence[torch.Tensor],
                             num_quantizers: int | None = None) -> float:
        """Mean squared log-mel error of encode -> decode with the first `num_quantizers`."""
        q = num_quantizers or self.config.num_quantizers
        total, count = 0.0, 0
        for mel in mels:
            recon = self.decode(self.encode(mel)[:, :q])[:, : mel.shape[1]]
            total += float((recon - mel.float()).square().sum())
            count += mel.numel()
        return total / count

    # --- persistence ---------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write rvq.safetensors then rvq.json (each via a temporary file + os.replace, the
        config last, so a reader that finds the config finds whole weights)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {"codebooks": self.codebooks.contiguous(), "mean": self.mean.contiguous(),
                   "std": self.std.contiguous()}
        tmp = directory / f".{WEIGHTS_FILE}.tmp"
        save_file(weights, str(tmp))
        os.replace(tmp, directory / WEIGHTS_FILE)
        tmp = directory / f".{CONFIG_FILE}.tmp"
        meta = {"format": FORMAT, "n_mels": self.n_mels, "config": asdict(self.config)}
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, directory / CONFIG_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> ResidualVQ:
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory} holds no {CONFIG_FILE} (not a saved ResidualVQ)")
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{config_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        weights = load_file(str(directory / WEIGHTS_FILE))
        return cls(RVQConfig(**meta["config"]), weights["mean"], weights["std"],
                   weights["codebooks"])


def _nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) for every row of x."""
    c_norm = codebook.square().sum(1)
    out = [torch.addmm(c_norm, block, codebook.T, alpha=-2).argmin(1)
           for block in x.split(_CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _move_to_means(codebook: torch.Tensor, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Move each centroid to the mean of its vectors (in place); returns the counts."""
    counts = torch.bincount(codes, minlength=len(codebook))
    sums = torch.zeros_like(codebook).index_add_(0, codes, x)
    used = counts > 0
    codebook[used] = sums[used] / counts[used, None].float()
    return counts


def _kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means from k distinct random rows; an emptied centroid takes the row that
    is currently worst represented, so every code stays in use."""
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in range(iters):
        codes = _nearest(x, centroids)
        counts = _move_to_means(centroids, x, codes)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            error = (x - centroids[codes]).square().sum(1)
            centroids[empty] = x[error.topk(len(empty)).indices]
    return centroids
