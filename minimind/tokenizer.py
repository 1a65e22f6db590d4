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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sized
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
