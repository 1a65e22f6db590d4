"""One background thread that owns the model, fed by any number of concurrent requests.

Why a single worker thread: the model is shared, and generations interleaved without batching
would only split its compute while each holds a KV cache, so they run one after another; and
generation is slow, blocking work that must stay off the event loop so the server keeps
accepting requests, answering /health and streaming.
Requests queue up in arrival order. Each generation is bounded by its max_tokens, and a
streaming client that goes away cancels its own generation (or its place in the queue), so no
request can hold the model forever.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from minimind.serve.engine import ChatEngine, Delta, GenerationSettings

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

_FINISHED = object()  # marks the end of a generation in the delta queue


class GenerationWorker:
    """Runs `ChatEngine.stream` calls one at a time on a dedicated thread."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minimind-generate")

    async def stream(self, prompt_ids: list[int], settings: GenerationSettings,
                     images: Sequence[Image.Image] = (),
                     clips: Sequence[np.ndarray] = ()) -> AsyncIterator[Delta]:
        """The engine's deltas for this prompt (and its images and audio clips, encoded on the
        worker thread), delivered on the event loop as they are made.

        Leaving the loop early (client disconnect, error) cancels the generation.
        """
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def forward(item: object) -> None:
            if not cancelled.is_set():
                loop.call_soon_threadsafe(deltas.put_nowait, item)

        def generate() -> None:
            try:
                for delta in self.engine.stream(prompt_ids, settings, cancelled, images, clips):
                    forward(delta)
            except Exception as error:  # re-raised on the event loop, in the request
                forward(error)
            else:
                forward(_FINISHED)

        job = self._executor.submit(generate)
        try:
            while (item := await deltas.get()) is not _FINISHED:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()
            job.cancel()  # still queued: never start it

    def close(self) -> None:
        """Drop queued generations and wait for the running one to end (at server shutdown)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
