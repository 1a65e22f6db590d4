"""Starting from existing weights: upstream MiniMind `.pth` state dicts, or our own folders.

Upstream MiniMind (jingyaogong/minimind, -v, -o) saves its models as flat fp16 state dicts
(`pretrain_768.pth`, `full_sft_768.pth`, `llm_768.pth`, ...), written with `torch.save`. Its
parameter names are the ones this project uses (they are Qwen3's), so a conversion is by name:

- wrapper prefixes (`module.` from DDP, `_orig_mod.` from torch.compile) are stripped;
- upstream's RoPE tables (`model.freqs_cos`, `model.freqs_sin`) are dropped when present: they
  are non-persistent buffers there and are recomputed per call here;
- `lm_head.weight` is accepted under tied embeddings only when it equals
  `model.embed_tokens.weight` (the same tensor upstream; plain `state_dict()` emits both);
- tensors become float32, and every shape must equal the model's.

Unlike upstream's own `load_state_dict(..., strict=False)`, the check is strict: a missing or
unexpected key is a `WeightsError` that lists every one of them, so a VLM checkpoint passed as
an LLM, or a MiniMind2 checkpoint passed to a MiniMind-3 config, fails at once instead of
training from half-random weights.

Also accepted: a safetensors file, a folder written by `save_pretrained` (this project's
models/*), and upstream's resume checkpoints (`{"model": state_dict, "optimizer": ...}`).
`fetch_weights` resolves a URI (hf://, https://, file:// or a path) to a local file, caching
downloads. Plain PyTorch and the Hub client: no DVC, MLflow or params here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from minimind.data.fetch import Fetched
    from minimind.model.config import MiniMindConfig

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ROPE_BUFFERS = ("model.freqs_cos", "model.freqs_sin")  # upstream's; recomputed here
HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"
URI_SCHEMES = ("hf://", "https://", "http://", "file://")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class WeightsError(ValueError):
    """Weights that do not fit the model: wrong keys, shapes, or an unreadable file."""


def check_weights_uri(uri: str) -> str:
    """Validate the form of an `init_from` value (not its existence: it may be made later)."""
    if not uri.strip():
        raise ValueError("must not be empty")
    if "://" in uri and not uri.startswith(URI_SCHEMES):
        raise ValueError(f"{uri!r}: expected hf://, https://, http://, file:// or a local path")
    if uri.startswith("hf://"):
        from minimind.data.fetch import parse_hf_uri

        parse_hf_uri(uri, "model")
    return uri


def expected_shapes(config: MiniMindConfig) -> dict[str, torch.Size]:
    """Every key a checkpoint of `config` must hold, with its shape (tied head left out)."""
    from minimind.model.modeling import MiniMindForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = MiniMindForCausalLM(config)
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop(HEAD, None)
    return shapes


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _shape(shape: torch.Size) -> list[int]:
    return list(shape)


def convert_state_dict(state: Mapping[str, torch.Tensor], config: MiniMindConfig
                       ) -> dict[str, torch.Tensor]:
    """An upstream (or our own) state dict as float32 tensors keyed for `config`'s model.

    Raises WeightsError naming every missing and unexpected key, every shape mismatch (with
    both shapes), and an untied `lm_head.weight` when the model ties it to the embedding.
    """
    renamed: dict[str, torch.Tensor] = {}
    for raw_key, tensor in state.items():
        key = _strip_wrappers(str(raw_key))
        if key in renamed:
            raise WeightsError(f"{raw_key!r} and another key both become {key!r} once the "
                               f"{' / '.join(WRAPPER_PREFIXES)} prefixes are stripped")
        if not isinstance(tensor, torch.Tensor):
            raise WeightsError(f"{raw_key!r} is a {type(tensor).__name__}, not a tensor")
        renamed[key] = tensor
    for key in ROPE_BUFFERS:
        renamed.pop(key, None)
    expected = expected_shapes(config)
    problems = []
    if config.tie_word_embeddings and HEAD in renamed:
        head = renamed.pop(HEAD)
        embedding = renamed.get(EMBEDDING)
        if embedding is not None and not (head.shape == embedding.shape
                                          and torch.equal(head, embedding)):
            problems.append(f"{HEAD} differs from {EMBEDDING}, but the model ties its output "
                            "head to the embedding (tie_word_embeddings)")
    missing = sorted(expected.keys() - renamed.keys())
    unexpected = sorted(renamed.keys() - expected.keys())
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    for key in sorted(expected.keys() & renamed.keys()):
        if renamed[key].shape != expected[key]:
            problems.append(f"{key}: the weights have shape {_shape(renamed[key].shape)}, the "
                            f"model {_shape(expected[key])}")
    embedding = renamed.get(EMBEDDING)
    if embedding is not None and EMBEDDING in expected and \
            embedding.shape[:1] != expected[EMBEDDING][:1]:
        problems.append(f"the vocabularies differ ({embedding.shape[0]} vs "
                        f"{expected[EMBEDDING][0]} tokens): use the tokenizer these weights "
                        "were trained with")
    if problems:
        raise WeightsError("the weights do not fit the model:\n  " + "\n  ".join(problems))
    return {key: tensor.to(torch.float32) for key, tensor in renamed.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth`/`.pt`/`.bin` file, a `.safetensors` file, or a model folder.

    A torch file may hold the state dict itself or a checkpoint with it under `model` or
    `state_dict` (upstream's *_resume.pth). Torch files load with `weights_only=True`: no
    pickled code runs.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        if not files:
            raise WeightsError(f"{path} holds no *.safetensors or pytorch_model*.bin file")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(read_state_dict(file))
        return state
    if not path.is_file():
        raise WeightsError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-torch files
        raise WeightsError(f"{path} is not a readable torch state dict: {exc}") from None
    if isinstance(loaded, Mapping) and not all(isinstance(v, torch.Tensor)
                                               for v in loaded.values()):
        for entry in ("model", "state_dict"):
            if isinstance(loaded.get(entry), Mapping):
                loaded = loaded[entry]
                break
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the weights at `path` into `model` (a MiniMindForCausalLM), strictly, in place."""
    state = convert_state_dict(read_state_dict(path), model.config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {HEAD} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:  # convert_state_dict checked this; be sure anyway
        raise WeightsError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
    if model.config.tie_word_embeddings:
        model.tie_weights()


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file; of a folder, of its weight files' names and hashes."""
    from minimind.data.fetch import sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin")):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def fetch_weights(uri: str, *, root: str | Path, cache_dir: str | Path) -> Fetched:
    """Resolve `uri` to local weights (a file, or a model folder for local paths).

    hf://[models/|datasets/]<owner>/<repo>/<path>[@rev] (a model repo unless prefixed; via
    huggingface_hub, so $HF_ENDPOINT mirrors work), https://… / http://… (resumable, kept in
    `cache_dir`: a rerun reuses the file without the network), file://… or a plain path
    (relative to `root`). Raises `DownloadError` for a fetch that fails or a missing path.
    """
    from minimind.data import fetch

    root, cache_dir = Path(root), Path(cache_dir)
    key = hashlib.sha1(uri.encode(), usedforsecurity=False).hexdigest()[:16]
    name = uri.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "weights"
    if uri.startswith("hf://"):
        return fetch.fetch_hf(uri, cache_dir / "files" / key / name, cache_dir=cache_dir / "hub",
                              repo_type="model")
    if uri.startswith(("https://", "http://")):
        dest = cache_dir / "files" / key / name
        if dest.is_file():
            return fetch.Fetched(dest, fetch.sha256_file(dest), dest.stat().st_size)
        return fetch.fetch_url(uri, dest, cache_dir=cache_dir / "http")
    if uri.startswith("file://"):
        path = fetch.local_path(uri, root)
    else:
        path = Path(uri) if Path(uri).is_absolute() else root / uri
        if not path.exists():
            raise fetch.DownloadError(f"{uri}: {path} does not exist")
    size = path.stat().st_size if path.is_file() else sum(
        f.stat().st_size for f in path.iterdir() if f.is_file())
    return fetch.Fetched(path, weights_sha256(path), size)
