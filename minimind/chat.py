"""`python -m minimind.chat --model DIR`: talk to a model folder in the terminal.

The conversation is kept between turns and each reply streams as it is generated, through the
same engine the HTTP server uses. Commands: `/reset` forgets the conversation, `/exit` (or
Ctrl-D) quits, Ctrl-C stops the reply being written.
"""

from __future__ import annotations

import argparse
from typing import Any

from minimind.generation import SamplingConfig
from minimind.serve.engine import ChatEngine, GenerationSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SamplingConfig()
    parser = argparse.ArgumentParser(prog="python -m minimind.chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--system", help="system prompt that opens every conversation")
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--max-tokens", type=int, default=256, help="longest reply, in tokens")
    parser.add_argument("--seed", type=int, help="seed the sampling for repeatable replies")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    engine = ChatEngine.from_folder(args.model, args.device)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    print("Chatting with", args.model, "- /reset to start over, /exit to quit.")
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            break
        if line == "/exit":
            break
        if line == "/reset":
            messages = list(opening)
            print("(conversation reset)")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        reply = stream_reply(engine, messages, args)
        if reply is None:
            messages.pop()
        else:
            messages.append({"role": "assistant", "content": reply})


def stream_reply(engine: ChatEngine, messages: list[dict[str, Any]],
                 args: argparse.Namespace) -> str | None:
    """Print the assistant's reply as it is generated; None if the conversation is too long."""
    prompt_ids = engine.prompt_ids(messages)
    room = engine.context_length - len(prompt_ids)
    if room < 1:
        print("(the conversation no longer fits the model's context: /reset to start over)")
        return None
    settings = GenerationSettings(max_new_tokens=min(args.max_tokens, room),
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    print("bot> ", end="", flush=True)
    pieces: list[str] = []
    try:
        for delta in engine.stream(prompt_ids, settings):
            print(delta.text, end="", flush=True)
            pieces.append(delta.text)
            if delta.finish_reason == "length":
                print(" [max tokens reached]", end="")
    except KeyboardInterrupt:
        print(" [stopped]", end="")
    print()
    return "".join(pieces)


if __name__ == "__main__":
    main()
