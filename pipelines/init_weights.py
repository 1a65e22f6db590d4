"""Starting a training stage from existing weights (`pretrain.init_from`, `sft.init_from`).

Its own module, so that only the stages offering `init_from` depend on the weights converter
(minimind.model.upstream) and the fetchers (minimind.data.fetch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS_CACHE = Path(".cache/weights")


def init_from_weights(model: Any, uri: str, root: Path, key: str) -> dict[str, Any]:
    """Load the weights at `uri` (`<stage>.init_from`, named by `key` in errors) into `model`.

    Rank 0 fetches (downloads are cached under .cache/weights, so a rerun does not download
    again) and tells the other torchrun ranks where the file is; every rank then loads it
    strictly (minimind.model.upstream). Returns {"source", "sha256"} for the stage's metrics.
    A missing path, failed download or mismatching checkpoint stops the stage with a message
    naming `key`.
    """
    import torch.distributed as dist

    from minimind.model.upstream import WeightsError, fetch_weights, load_weights

    distributed = dist.is_initialized() and dist.get_world_size() > 1
    found: list[Any] = [None]
    if not distributed or dist.get_rank() == 0:
        try:
            fetched = fetch_weights(uri, root=root, cache_dir=root / WEIGHTS_CACHE)
            found = [(str(fetched.path), fetched.sha256)]
        except Exception as exc:  # every rank must hear of the failure, not hang
            found = [f"{type(exc).__name__}: {exc}"]
    if distributed:
        dist.broadcast_object_list(found, src=0)
    if isinstance(found[0], str):
        raise SystemExit(f"{key}: cannot fetch {uri!r}: {found[0]}")
    path, sha256 = found[0]
    try:
        load_weights(model, path)
    except WeightsError as exc:
        raise SystemExit(f"{key}: {uri!r} ({path}): {exc}") from exc
    return {"source": uri, "sha256": sha256}
