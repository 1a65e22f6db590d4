"""The MiniMind tokenizer: byte-level BPE, MiniMind-3 special tokens and a ChatML chat template.

Why byte-level BPE: the base alphabet is the 256 byte values, so every Unicode string (Chinese,
emoji, code, control characters) encodes without an unknown token and decodes back to exactly
the same string. There is deliberately no normaliser here: the data pipeline normalises text
before it reaches the tokenizer, and the tokenizer itself must stay lossless.

The MiniMind-3 added tokens take ids 0..14 (SPECIAL_TOKENS order) and are matched before
pre-tokenisation, so they are never split; BPE merges never produce them because the byte-level
pre-tokeniser cuts "<|", "im", "_", ... apart before any merge. Only the control tokens
(ChatML and multimodal markers) are "special" for `skip_special_tokens`; `<think>`, `<tool_call>`
and friends are ordinary added tokens, because they are content a client must see to parse
reasoning and tool calls out of decoded text.

The result is a plain Hugging Face `PreTrainedTokenizerFast` with the chat template embedded, so
`save_pretrained(dir)` gives a folder that `AutoTokenizer.from_pretrained(dir)` loads without
`trust_remote_code`, and `apply_chat_template(..., return_assistant_tokens_mask=True)` yields the
assistant-only loss masks that SFT needs.

An existing tokenizer can stand in for a trained one (`load_pretrained_tokenizer`: a hub id or
a folder, e.g. upstream MiniMind's `model/`), once `check_pipeline_tokenizer` has confirmed it
has every token and the chat layout the pipeline relies on. Its template need not mark
assistant turns with `{% generation %}`: `encode_chat` then finds them by their ChatML
markers, as upstream MiniMind's own training code does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:  # transformers is heavy; import it only where a tokenizer is built
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Control tokens structure a sequence and never belong in text shown to a user, so they are
# "special": `decode(..., skip_special_tokens=True)` drops them.
CHATML_TOKENS: list[str] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Multimodal markers: an image or audio clip becomes start, N pads (replaced by projected encoder
# features inside the model), end.
MULTIMODAL_TOKENS: list[str] = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
]
CONTROL_TOKENS: list[str] = CHATML_TOKENS + MULTIMODAL_TOKENS
# Tool and reasoning markers are part of what the assistant says: a client parses tool calls and
# thinking out of the decoded text, so `skip_special_tokens=True` must keep them. They are still
# atomic added tokens (never split, never built by merges), just not "special".
CONTENT_TOKENS: list[str] = [
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
# All added tokens in id order: SPECIAL_TOKENS[i] has id i.
SPECIAL_TOKENS: list[str] = CONTROL_TOKENS + CONTENT_TOKENS

BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE
MAX_VOCAB_SIZE = 65536  # token shards store ids as uint16
MODEL_MAX_LENGTH = 32768
TOOL_FIELDS = ("tools", "tool_calls")  # message fields the data format stores as JSON strings

# ChatML in MiniMind-3's (Qwen3-style) layout. Every assistant turn's body, from after
# "<|im_start|>assistant\n" through its "<|im_end|>", sits in a generation block so that
# transformers can report which tokens the assistant produced.
CHAT_TEMPLATE = r"""
{%- macro text_of(message) %}
    {%- if message.content is not defined %}
        {{- '' }}
    {%- elif message.content is string %}
        {{- message.content }}
    {%- else %}
        {{- raise_exception('Message content must be a string, got: ' ~ message.content) }}
    {%- endif %}
{%- endmacro %}
{%- set system_message = messages[0] if messages[0].role == 'system' else none %}
{%- if not tools and system_message and system_message.tools %}
    {%- set tools = system_message.tools %}
{%- endif %}
{%- if system_message or tools %}
    {{- '<|im_start|>system\n' }}
    {%- if system_message %}
        {{- text_of(system_message) }}
    {%- endif %}
    {%- if tools %}
        {%- if system_message and text_of(system_message) %}
            {{- '\n\n' }}
        {%- endif %}
        {{- '# Tools\n\nYou can call the functions described in <tools></tools>:\n<tools>' }}
        {%- for tool in ([tools] if tools is string or tools is mapping else tools) %}
            {{- '\n' ~ (tool if tool is string else tool | tojson) }}
        {%- endfor %}
        {{- '\n</tools>\n\nTo call a function, answer with its name and arguments as JSON inside'
            ' <tool_call></tool_call> tags:\n<tool_call>\n'
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = text_of(message) %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}
            {{- '<|im_start|>system\n' ~ content ~ '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\n' ~ content ~ '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            {%- if message.reasoning_content is string %}
                {{- '<think>\n' ~ message.reasoning_content ~ '\n</think>\n\n' }}
            {%- endif %}
            {{- content }}
            {%- set calls = message.tool_calls or [] %}
            {%- for call in ([calls] if calls is string or calls is mapping else calls) %}
                {%- if content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {%- if call is string %}
                    {{- '<tool_call>\n' ~ call ~ '\n</tool_call>' }}
                {%- else %}
                    {%- set function = call.function if call.function is defined else call %}
                    {%- set arguments = function.arguments | default({}) %}
                    {%- if arguments is not string %}
                        {%- set arguments = arguments | tojson %}
                    {%- endif %}
                    {{- '<tool_call>\n{"name": ' ~ (function.name | tojson) }}
                    {{- ', "arguments": ' ~ arguments ~ '}\n</tool_call>' }}
                {%- endif %}
            {%- endfor %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>tool\n<tool_response>\n' ~ content ~ '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- raise_exception('Unknown chat role "' ~ message.role
                            ~ '": expected system, user, assistant or tool') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
""".strip()


class TokenizerConfig(BaseModel):
    """Tokenizer training settings (the `tokenizer` section of the pipeline's params)."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(
        default=6400,
        ge=MIN_VOCAB_SIZE,
        le=MAX_VOCAB_SIZE,
        description="Total vocabulary size, special tokens and the 256 byte symbols included.",
    )
    min_frequency: int = Field(
        default=2, ge=1, description="A pair must occur at least this often to be merged."
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 6400,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for Hugging Face.

    `texts` is streamed (any iterable; a length hint is used when it has `len`), so a corpus
    larger than memory is fine. `vocab_size` counts everything: the special tokens (ids
    0..len(SPECIAL_TOKENS)-1), the 256 byte symbols and the learned merges. A corpus too small to
    yield enough merge pairs at `min_frequency` gives a smaller vocabulary.
    """
    TokenizerConfig(vocab_size=vocab_size, min_frequency=min_frequency)  # validates the ranges
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(token, normalized=False) for token in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    length = len(texts) if isinstance(texts, Sized) else None
    backend.train_from_iterator(texts, trainer=trainer, length=length)
    return _wrap_for_transformers(_with_content_tokens_visible(backend))


def _with_content_tokens_visible(backend: Tokenizer) -> Tokenizer:
    """Return `backend` with only CONTROL_TOKENS flagged special.

    The trainer registers every token it was given as special; `Tokenizer.add_tokens` cannot
    clear that flag, so we rewrite it in the serialised form.
    """
    state = json.loads(backend.to_str())
    for added in state["added_tokens"]:
        added["special"] = added["content"] in CONTROL_TOKENS
    return Tokenizer.from_str(json.dumps(state))


def _wrap_for_transformers(backend: Tokenizer) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens=MULTIMODAL_TOKENS,
    )


def decode_tool_fields(messages: Iterable[dict]) -> list[dict]:
    """Return copies of `messages` whose `tools` and `tool_calls` JSON strings are decoded.

    The data format stores both as JSON text, and Jinja cannot parse JSON: given a string, the
    chat template renders it verbatim as a single `<tools>` entry or `<tool_call>` block. Decoded,
    every tool and every call is rendered on its own line in one canonical form, the same as when
    the caller passes Python objects. Strings that are not valid JSON are kept unchanged.
    """
    return [
        {key: _decoded_json(value) if key in TOOL_FIELDS else value for key, value in m.items()}
        for m in messages
    ]


def _decoded_json(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def bytes_per_token(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over `texts` (no special tokens added): the compression ratio.

    Higher means shorter sequences for the same text, i.e. more text per unit of compute.
    """
    total_bytes = total_tokens = 0
    for text in texts:
        total_bytes += len(text.encode("utf-8"))
        total_tokens += len(tokenizer.encode(text, add_special_tokens=False))
    if total_tokens == 0:
        raise ValueError("bytes_per_token needs at least one non-empty text")
    return total_bytes / total_tokens


# -- chat encoding with assistant masks -------------------------------------------------------
ASSISTANT_HEADER = "<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_blocks(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template marks assistant turns with `{% generation %}` (ours does)."""
    template = tokenizer.chat_template
    return isinstance(template, str) and bool(_GENERATION_TAG.search(template))


def chatml_assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in rendered ChatML: from after each
    `<|im_start|>assistant\\n` through its `<|im_end|>` (to the end of `text` if unclosed)."""
    spans = []
    start = text.find(ASSISTANT_HEADER)
    while start != -1:
        body = start + len(ASSISTANT_HEADER)
        end = text.find(END_OF_TURN, body)
        stop = len(text) if end == -1 else end + len(END_OF_TURN)
        if stop > body:
            spans.append((body, stop))
        start = text.find(ASSISTANT_HEADER, stop)
    return spans


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict]
                ) -> tuple[list[int], list[int]]:
    """Token ids of `messages` rendered by the chat template, and the assistant mask (1 = a
    token the assistant says: its reasoning, content, tool calls and closing `<|im_end|>`).

    A template with `{% generation %}` blocks (ours) reports the assistant tokens itself. One
    without them (upstream MiniMind's, most ChatML templates) gets the same spans from the
    rendered text's markers (`chatml_assistant_spans`), mapped to tokens the way transformers
    maps generation blocks. `tools` / `tool_calls` JSON strings are decoded first, and tools
    stored on the system message are also passed as `tools=`, for templates (upstream's) that
    read them only there; ours renders both the same.
    """
    messages = decode_tool_fields(messages)
    tools = None
    if messages and messages[0].get("role") == "system" and messages[0].get("tools"):
        found = messages[0]["tools"]
        found = [found] if isinstance(found, dict) else found
        if isinstance(found, list) and all(isinstance(tool, dict) for tool in found):
            tools = found
    if has_generation_blocks(tokenizer):
        encoded = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True,
                                                return_dict=True,
                                                return_assistant_tokens_mask=True)
        return list(encoded["input_ids"]), list(encoded["assistant_masks"])
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False)
    ids = list(encoded["input_ids"])
    mask = [0] * len(ids)
    for start, stop in chatml_assistant_spans(text):
        first, last = encoded.char_to_token(start), encoded.char_to_token(stop - 1)
        if first is None:
            continue
        for index in range(first, (len(ids) - 1 if last is None else last) + 1):
            mask[index] = 1
    return ids, mask


# -- an existing tokenizer instead of a trained one -------------------------------------------
# What a tokenizer folder may hold; hub downloads fetch these by name (absent ones are skipped).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
_HUB_ID = re.compile(r"^(?:hf://)?(?:models/)?(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
                     r"(?:@(?P<rev>[^@\s]+))?$")
_PROBE_TOOLS = [{"type": "function", "function": {
    "name": "probe_lookup", "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}]
# One conversation exercising everything the pipeline's SFT/DPO/VLM data can hold.
PROBE_CONVERSATION = [
    {"role": "system", "content": "Probe system prompt.", "tools": json.dumps(_PROBE_TOOLS)},
    {"role": "user", "content": "PROBE_USER_ONE"},
    {"role": "assistant", "content": "PROBE_REPLY_ONE", "reasoning_content": "PROBE_REASONING"},
    {"role": "user", "content": "PROBE_USER_TWO <|image_pad|><|audio_pad|>"},
    {"role": "assistant", "content": "",
     "tool_calls": json.dumps([{"name": "probe_call", "arguments": {"word": "x"}}])},
    {"role": "tool", "content": "PROBE_TOOL_RESULT"},
    {"role": "assistant", "content": "PROBE_REPLY_TWO"},
]
_TRAINED_TEXTS = ("PROBE_REPLY_ONE", "PROBE_REASONING", "probe_call", "PROBE_REPLY_TWO")
_CONTEXT_TEXTS = ("PROBE_USER_ONE", "PROBE_USER_TWO", "PROBE_TOOL_RESULT")


def check_pretrained_spec(spec: str) -> str:
    """Validate the form of a `pretrained` value (not its existence: a folder may come later)."""
    if not spec.strip():
        raise ValueError("must not be empty")
    if "://" in spec and not spec.startswith(("hf://", "file://")):
        raise ValueError(f"{spec!r}: expected a hub id <owner>/<repo>[@rev], "
                         "hf://<owner>/<repo>[@rev], a folder or file://<folder>")
    if spec.startswith("hf://") and not _HUB_ID.match(spec):
        raise ValueError(f"{spec!r}: expected hf://<owner>/<repo>[@rev]")
    return spec


def download_hub_tokenizer(repo_id: str, revision: str | None, cache_dir: Path) -> Path:
    """The tokenizer files of a hub model repo (or the $HF_ENDPOINT mirror), in a local folder.

    Files are fetched by name with `hf_hub_download` (one `resolve` request each, no listing
    API), so any mirror that serves files works; a file the repo lacks is skipped, except
    tokenizer.json. A rerun finds them in `cache_dir` and only revalidates.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    local = Path(cache_dir) / repo_id / (revision or "main")
    for name in TOKENIZER_FILES:
        try:
            hf_hub_download(repo_id=repo_id, filename=name, revision=revision,
                            repo_type="model", local_dir=local)
        except (EntryNotFoundError, HfHubHTTPError) as exc:
            response = getattr(exc, "response", None)
            absent = isinstance(exc, EntryNotFoundError) or getattr(
                response, "status_code", None) == 404
            if name == "tokenizer.json" or not absent:
                raise
    return local


def resolve_pretrained(spec: str, root: str | Path, cache_dir: str | Path
                       ) -> tuple[Path, str]:
    """(local folder, "dir" or "hub") of a `pretrained` value.

    `file://<folder>` and an existing folder (absolute, or relative to `root`) are used in
    place; otherwise `[hf://]<owner>/<repo>[@rev]` is downloaded from the hub.
    """
    root = Path(root)
    if spec.startswith("file://"):
        raw = spec.removeprefix("file://")
        path = Path(raw) if raw.startswith("/") else root / raw
        if not path.is_dir():
            raise FileNotFoundError(f"{spec}: {path} is not a folder")
        return path, "dir"
    path = Path(spec) if Path(spec).is_absolute() else root / spec
    if not spec.startswith("hf://") and path.is_dir():
        return path, "dir"
    hub = _HUB_ID.match(spec)
    if hub is None:
        raise FileNotFoundError(f"{spec!r} is neither a folder ({path} does not exist) nor a "
                                "hub id <owner>/<repo>[@rev]")
    try:
        return download_hub_tokenizer(hub["repo"], hub["rev"], Path(cache_dir)), "hub"
    except Exception as exc:
        where = "" if spec.startswith("hf://") else f" (and {path} is not a folder)"
        raise RuntimeError(f"{spec!r}: could not fetch the tokenizer of hub repo "
                           f"{hub['repo']}{where}: {type(exc).__name__}: {exc}") from exc


def load_pretrained_tokenizer(spec: str, root: str | Path = ".",
                              cache_dir: str | Path = ".cache/tokenizers"
                              ) -> tuple[PreTrainedTokenizerBase, dict[str, str]]:
    """An existing tokenizer (a folder or hub id, see `resolve_pretrained`) and where it came
    from: {"source", "source_kind", "sha256" (of its tokenizer.json)}. Not yet checked for the
    pipeline's needs: see `check_pipeline_tokenizer`."""
    from transformers import AutoTokenizer

    folder, kind = resolve_pretrained(spec, root, cache_dir)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{spec!r}: {folder} has no tokenizer.json (the pipeline needs "
                                "a fast tokenizer: its assistant masks come from offsets)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.is_fast:
        raise ValueError(f"{spec!r}: {type(tokenizer).__name__} is not a fast tokenizer")
    return tokenizer, {"source": spec, "source_kind": kind,
                       "sha256": hashlib.sha256((folder / "tokenizer.json").read_bytes()
                                             ).hexdigest()}


def check_pipeline_tokenizer(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Raise ValueError listing everything that keeps `tokenizer` from serving the pipeline;
    return warnings (things that work, but less well).

    Checked: every token of SPECIAL_TOKENS exists and encodes to one id, the control tokens are
    special (dropped from decoded replies), eos is `<|im_end|>` (generation stops there), a pad
    token exists, ids fit uint16, and the chat template renders a probe conversation (system +
    tools, reasoning, a tool call, a tool reply, pads) so that `encode_chat`'s mask covers
    exactly the three assistant turns, each ending with `<|im_end|>`, and
    `add_generation_prompt` opens an assistant turn.
    """
    problems: list[str] = []
    vocab = tokenizer.get_vocab()
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        problems.append(f"missing tokens the pipeline needs: {', '.join(missing)}")
    split = [token for token in SPECIAL_TOKENS if token in vocab
             and tokenizer.encode(token, add_special_tokens=False) != [vocab[token]]]
    if split:
        problems.append(f"not encoded as a single (added) token: {', '.join(split)}")
    added = tokenizer.added_tokens_decoder
    plain = [token for token in CONTROL_TOKENS
             if token in vocab and not getattr(added.get(vocab[token]), "special", False)]
    if plain:
        problems.append(f"must be special tokens (decoded replies drop them): {', '.join(plain)}")
    if tokenizer.eos_token != END_OF_TURN:
        problems.append(f"eos_token is {tokenizer.eos_token!r}, must be {END_OF_TURN} "
                        "(generation stops at eos)")
    if tokenizer.pad_token is None:
        problems.append("pad_token is not set")
    if len(tokenizer) > MAX_VOCAB_SIZE:
        problems.append(f"{len(tokenizer)} tokens do not fit the uint16 token shards "
                        f"({MAX_VOCAB_SIZE})")
    warnings: list[str] = []
    if not tokenizer.chat_template:
        problems.append("it has no chat template")
    elif not missing:
        chat_problems, warnings = _chat_template_problems(tokenizer)
        problems += chat_problems
    if problems:
        raise ValueError("the tokenizer cannot serve the pipeline:\n  " + "\n  ".join(problems))
    return warnings


def _chat_template_problems(tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[str]]:
    try:
        ids, mask = encode_chat(tokenizer, PROBE_CONVERSATION)
        bare = tokenizer.apply_chat_template(PROBE_CONVERSATION[:2], tokenize=False)
        prompt = tokenizer.apply_chat_template(PROBE_CONVERSATION[:2], tokenize=False,
                                               add_generation_prompt=True)
    except Exception as exc:
        return [f"the chat template fails on a probe conversation: "
                f"{type(exc).__name__}: {exc}"], []
    runs, start = [], None
    for index, flag in enumerate([*mask, 0]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index))
            start = None
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    trained = "".join(tokenizer.decode(ids[a:b]) for a, b in runs)
    context = tokenizer.decode([i for i, flag in zip(ids, mask, strict=True) if not flag])
    problems = []
    if len(runs) != 3 or any(ids[b - 1] != end_id for _, b in runs):
        problems.append(f"the assistant mask of a probe with 3 assistant turns has {len(runs)} "
                        f"span(s), not each ending with {END_OF_TURN}: the template must "
                        f"write each assistant turn as {ASSISTANT_HEADER!r}…{END_OF_TURN} "
                        "(or mark it with {% generation %})")
    if lost := [text for text in _TRAINED_TEXTS if text not in trained]:
        problems.append(f"assistant text outside the assistant mask: {', '.join(lost)}")
    if leaked := [text for text in _CONTEXT_TEXTS if text in trained or text not in context]:
        problems.append(f"user/tool text missing or inside the assistant mask: "
                        f"{', '.join(leaked)}")
    if not prompt.startswith(bare) or ASSISTANT_HEADER not in prompt[len(bare):]:
        problems.append(f"add_generation_prompt does not open an assistant turn "
                        f"({ASSISTANT_HEADER!r})")
    warnings = []
    if "probe_lookup" not in context:
        warnings.append("the chat template does not render a system message's tools: SFT "
                        "records with tools would train without their schemas")
    return problems, warnings
