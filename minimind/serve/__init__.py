"""Serve a chat model over an OpenAI-compatible HTTP API (`python -m minimind.serve`).

- `engine`: token-by-token generation with stop strings and streaming, and speech from a
  Talker (no web dependencies);
- `worker`: the single thread that runs generations one at a time for concurrent requests;
- `schemas`: the chat-completions request;
- `image_input`: `image_url` data URIs -> checked RGB images (vision-language models);
- `audio_io`: `input_audio` parts -> checked 16 kHz clips (omni models), speech -> WAV;
- `app`: the FastAPI app, `create_app(model_dir, ...)`.
"""

from minimind.serve.app import create_app

__all__ = ["create_app"]
