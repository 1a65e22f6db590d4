"""`python -m minimind.serve --model DIR [--talker DIR]`: serve a model folder (text, vision or
omni) with uvicorn; with a Talker folder, replies can be spoken too."""

from __future__ import annotations

import argparse
import os

import uvicorn

from minimind.serve.app import DEFAULT_MAX_TOKENS_LIMIT, create_app
from minimind.serve.audio_io import DEFAULT_MAX_AUDIO_BYTES, DEFAULT_MAX_AUDIO_CLIPS
from minimind.serve.image_input import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minimind.serve", description=__doc__)
    parser.add_argument("--model", required=True, help="Hugging Face model folder to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("MINIMIND_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $MINIMIND_API_KEY)")
    parser.add_argument("--model-name", help="model id clients ask for (default: folder name)")
    parser.add_argument("--max-tokens-limit", type=int, default=DEFAULT_MAX_TOKENS_LIMIT,
                        help="most completion tokens one request may ask for")
    parser.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES,
                        help="larger images (decoded bytes) get a 413 (vision models)")
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                        help="most images one request may hold (vision models)")
    parser.add_argument("--max-audio-bytes", type=int, default=DEFAULT_MAX_AUDIO_BYTES,
                        help="larger audio clips (decoded bytes) get a 413 (omni models)")
    parser.add_argument("--max-audio-clips", type=int, default=DEFAULT_MAX_AUDIO_CLIPS,
                        help="most audio clips one request may hold (omni models)")
    parser.add_argument("--talker", help="Talker folder (save_talker) reading this model's "
                        "states: answers modalities [\"text\", \"audio\"] with speech")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = create_app(args.model, model_name=args.model_name, api_key=args.api_key,
                     max_tokens_limit=args.max_tokens_limit,
                     max_image_bytes=args.max_image_bytes, max_images=args.max_images,
                     max_audio_bytes=args.max_audio_bytes, max_audio_clips=args.max_audio_clips,
                     talker=args.talker, device=args.device)
    print(f"Serving {args.model} at http://{args.host}:{args.port}/v1"
          f"{' (API key required)' if args.api_key else ''}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
