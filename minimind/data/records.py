"""Record schemas: check a raw JSON object against its data kind and return it canonical.

Every downstream stage (tokenizer training, tokenisation, the SFT/DPO datasets, the
multimodal feature cache) relies on one shape per kind, so the clean stage validates each
raw record once, here, and keeps only the canonical form:

- pretrain: `{"text": str}`
- sft:      `{"conversations": [message, ...]}`
- dpo:      `{"chosen": [message, ...], "rejected": [message, ...]}`
- vlm/omni: like sft, plus the media fields of that kind passed through untouched, and the
            evaluation fields `answer_types` / `answer_choices` when given (checked)

A vlm record carries its images in MiniMind-V's layouts: `image_bytes` (Parquet: the encoded
bytes, or a list of them for several images) or `image` (JSONL: a path, several as a
comma-separated string, or a list of paths). `image_refs` reads either into one list, and
`check_image_markers` holds them against the `<image>` markers of the user turns: one
marker per image, in order. An omni record (MiniMind-O) adds `question_audios` (the clips
spoken in the user turns, bytes or paths, one `<audio>` marker each) and `answer_audio` (the
assistant's reply spoken, for speech out); `audio_refs` reads them and `check_audio_markers`
matches them to the markers.

MiniMind-O's own Parquet files (`sft_a2a*.parquet`) put no `<audio>` marker in the text:
`question_audios[i]` is the clip of the i-th user turn, null or empty for a text-only turn,
and some exports add `question_text[i]`, its transcript. `match_turn_audios` turns such a
record into the marker layout (see its docstring for the rule); MiniMind-O's Mimi-code
fields (`answer_audios`, `ref_audios`) and `spk_emb` pass through and the clean stage drops
them, counted (nothing here trains on Mimi codes).

A vlm or omni record may also say how its answers are to be scored (the evaluation fields;
`answer_fields` checks them and the clean stage keeps them, JSON text in the clean rows):

- `answer_types`: one entry per assistant message, in order: a question type name
  ("colour", "count", ...) or null for none. Two names are reserved for the scoring rules
  (`minimind.vlm_eval`): `short_answer` (exact match) and `open` (a soft overlap score), and
  for omni `transcript` (the reply is scored as ASR);
- `answer_choices`: one entry per assistant message: null, or the list of every answer the
  question allows (at least two, distinct after `normalise_answer`), the turn's own answer
  among them; chance is then 1 / len. A turn with choices needs a type (not `open`).

Either field may be a list or, as in MiniMind's Parquet files, JSON text of one; missing or
null means "no fields" and evaluation falls back to its length rule. A field of the wrong
shape raises SchemaError: `answer_count_mismatch` (not one entry per assistant message),
`wrong_type`, `bad_answer_choices` or `answer_not_in_choices`.

A message is `{"role", "content"}` plus, when present, `reasoning_content`, `tools` and
`tool_calls`; the last two are stored as compact JSON strings (the public MiniMind datasets
keep them as strings, and a string column keeps the Parquet schema stable). Conversations
stored as a JSON string, as in MiniMind's Parquet files, are parsed.

A record that does not fit raises `SchemaError` with a short snake_case `reason` (counted
in the clean report) and a `detail` naming the offending field, e.g.
`conversations[2].role: 'bot' is not one of system, user, assistant, tool`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from typing import Any, Literal, get_args

Kind = Literal["pretrain", "sft", "dpo", "vlm", "omni"]
KINDS: tuple[str, ...] = get_args(Kind)
ROLES = ("system", "user", "assistant", "tool")
IMAGE_MARKER = "<image>"
AUDIO_MARKER = "<audio>"
IMAGE_FIELDS = ("image_bytes", "image", "images")
ANSWER_FIELDS = ("answer_types", "answer_choices")  # optional, vlm and omni (see above)
OPEN_TYPE = "open"  # reserved answer types: scored softly, by exact match, as ASR
SHORT_ANSWER_TYPE = "short_answer"
TRANSCRIPT_TYPE = "transcript"
# What `normalise_answer` strips from the end of an answer: ASCII and CJK punctuation.
ANSWER_PUNCTUATION = string.punctuation + " \t\n\u3002\uff0c\u3001\uff01\uff1f\uff1b\uff1a\u2026"

# Top-level fields that later stages of a kind read (images for the vision encoder, audio
# for the audio encoder and the speech codec). Any other top-level key is dropped.
MEDIA_FIELDS: dict[str, tuple[str, ...]] = {
    "vlm": IMAGE_FIELDS,
    "omni": (
        *IMAGE_FIELDS,
        "question_audios", "question_text", "answer_audios", "answer_audio", "ref_audios",
        "spk_emb",
    ),
}


class SchemaError(ValueError):
    """A record that does not match its kind's schema; `reason` is a snake_case code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def validate_record(kind: Kind, value: dict) -> dict:
    """Return the canonical record or raise SchemaError.

    Raises ValueError (not SchemaError) for an unknown `kind`: that is a configuration
    error, not bad data.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(value, dict):
        raise SchemaError("wrong_type", f"record: expected an object, got {_type_name(value)}")
    if kind == "pretrain":
        return {"text": _text_field(value, "text")}
    if kind == "dpo":
        return _dpo_record(value)
    conversations = _messages(value, "conversations")
    if not any(_is_answer(message) for message in conversations):
        raise SchemaError(
            "no_assistant_turn", "conversations: no assistant turn with content or tool_calls"
        )
    media = {key: value[key] for key in MEDIA_FIELDS.get(kind, ()) if key in value}
    fields = answer_fields(value, conversations) if kind in MEDIA_FIELDS else {}
    return {"conversations": conversations, **media, **fields}


def normalise_answer(text: str) -> str:
    """Lower case, no surrounding space, no trailing punctuation: "Top left." -> "top left",
    "红色。" -> "红色". Exact-match scoring compares answers in this form."""
    return text.strip().lower().rstrip(ANSWER_PUNCTUATION).strip()


def answer_fields(record: Mapping[str, Any], messages: list[dict]) -> dict[str, list]:
    """The evaluation fields of a vlm/omni record, checked against its (canonical) messages.

    Returns `{"answer_types": [...], "answer_choices": [...]}` with a missing or null field
    left out; each list has one entry per assistant message (type name or None; list of
    choices or None). Raises SchemaError for a malformed field (see the module docstring).
    """
    answers = [m for m in messages if m.get("role") == "assistant"]
    types = _answer_list(record, "answer_types", len(answers))
    choices = _answer_list(record, "answer_choices", len(answers))
    out: dict[str, list] = {}
    if types is not None:
        for i, name in enumerate(types):
            if name is not None and not isinstance(name, str):
                raise SchemaError("wrong_type", f"answer_types[{i}]: expected a type name or "
                                                f"null, got {_type_name(name)}")
            if isinstance(name, str) and not name.strip():
                raise SchemaError("wrong_type", f"answer_types[{i}]: empty type name (null "
                                                "stands for none)")
        out["answer_types"] = types = [None if t is None else t.strip() for t in types]
    if choices is not None:
        out["answer_choices"] = [
            None if options is None else _choices(options, i, (types or [None] * len(answers))[i],
                                                  answers[i]["content"])
            for i, options in enumerate(choices)]
    return out


def _json_text(text: str, reason: str, where: str) -> Any:
    """`text` parsed as JSON; a SchemaError(`reason`) naming `where` when it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise SchemaError(reason, f"{where}: {err}") from None


def _answer_list(record: Mapping[str, Any], field: str, turns: int) -> list | None:
    """`record[field]` as a list with one entry per assistant message, None when absent."""
    value = record.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        value = _json_text(value, "invalid_json", f"{field}: not a JSON list")
        if value is None:
            return None
    if not isinstance(value, list):
        raise SchemaError("wrong_type", f"{field}: expected a list with one entry per "
                                        f"assistant turn, got {_type_name(value)}")
    if len(value) != turns:
        raise SchemaError("answer_count_mismatch", f"{field}: {len(value)} entries for "
                                                   f"{turns} assistant turn(s)")
    return list(value)


def _choices(options: Any, i: int, kind: str | None, reference: str) -> list[str]:
    where = f"answer_choices[{i}]"
    if not isinstance(options, list):
        raise SchemaError("wrong_type", f"{where}: expected a list of answers or null, got "
                                        f"{_type_name(options)}")
    for j, option in enumerate(options):
        if not isinstance(option, str):
            raise SchemaError("wrong_type", f"{where}[{j}]: expected a string, got "
                                            f"{_type_name(option)}")
    normal = [normalise_answer(option) for option in options]
    if len(options) < 2 or "" in normal or len(set(normal)) < len(normal):
        raise SchemaError("bad_answer_choices", f"{where}: needs at least two distinct, "
                                                f"non-empty answers, got {options!r}"[:300])
    if kind is None or kind == OPEN_TYPE:
        raise SchemaError("bad_answer_choices", f"{where}: choices need a type in "
                                                f"answer_types[{i}] (not null or {OPEN_TYPE!r})")
    if normalise_answer(reference) not in normal:
        raise SchemaError("answer_not_in_choices", f"{where}: the answer {reference[:80]!r} is "
                                                   "not one of the choices")
    return list(options)


def image_refs(record: dict) -> list[bytes | str]:
    """The images of a vlm/omni record, in marker order: encoded bytes or file paths.

    `image_bytes` holds bytes or a list of bytes; `image` / `images` a path, a comma-separated
    string of paths (MiniMind-V's JSONL) or a list of paths. A record that fills more than one
    of these fields is ambiguous and raises SchemaError (`conflicting_fields`), as does a value
    of the wrong type or an empty path. No field at all gives [].
    """
    present = [key for key in IMAGE_FIELDS if record.get(key) is not None]
    if len(present) > 1:
        raise SchemaError("conflicting_fields", f"{', '.join(present)}: images must come in "
                                                "one field")
    if not present:
        return []
    key = present[0]
    value = record[key]
    items = value if isinstance(value, list) else [value]
    if key == "image_bytes":
        for i, item in enumerate(items):
            if not isinstance(item, bytes | bytearray):
                raise SchemaError("wrong_type",
                                  f"{key}[{i}]: expected bytes, got {_type_name(item)}")
        return [bytes(item) for item in items]
    if isinstance(value, str):
        items = value.split(",")
    paths = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise SchemaError("wrong_type", f"{key}[{i}]: expected a path, got {_type_name(item)}")
        if not item.strip():
            raise SchemaError("empty_image_path", f"{key}[{i}]: empty path")
        paths.append(item.strip())
    return paths


def check_image_markers(messages: list[dict], images: int) -> None:
    """Raise SchemaError unless the user turns hold exactly one `<image>` marker per image.

    `image_count_mismatch` names the counts, or the non-user turn that holds a marker (the
    image tokens are placed where user markers stand; elsewhere they would be lost).
    """
    _check_markers(messages, IMAGE_MARKER, images, "image")


def check_audio_markers(messages: list[dict], clips: int) -> None:
    """Raise SchemaError (`audio_count_mismatch`) unless the user turns hold exactly one
    `<audio>` marker per question clip, and no other turn holds one."""
    _check_markers(messages, AUDIO_MARKER, clips, "audio")


def match_turn_audios(record: dict) -> tuple[dict, int]:
    """An omni record in the marker layout, and how many user turns were given a marker here.

    A record whose turns hold an `<audio>` marker is returned as it is (its markers are held
    against its clips by `check_audio_markers`). Otherwise, as in MiniMind-O's Parquet files,
    `question_audios` holds one entry per user turn, in order (upstream's `omni_dataset.py`
    reads the clip of user turn k as `question_audios[k]`): a null or empty entry leaves its
    turn text only and is dropped, any other entry gives its turn one `<audio>` marker. The
    marker replaces the turn's text when that text equals the turn's `question_text` entry
    (whitespace aside; any `<image>` markers stay, first): the clip *is* the question, and
    the transcript beside it would let the model answer without listening. Otherwise (no
    transcript, or one that differs: the text is then an instruction about the clip) the
    marker goes before the text, `<audio>\n` + text, MiniMind-O's "audio then text" form.
    `question_text` is kept, cut to the clips kept.

    Raises SchemaError `audio_count_mismatch` when an unmarked record's entries are not one
    per user turn (the detail names both counts), or when `question_text` is not one entry
    per `question_audios` entry; `wrong_type` for a `question_text` that is not a list of
    strings or nulls.
    """
    value = record.get("question_audios")
    entries = [] if value is None else list(value) if isinstance(value, list) else [value]
    texts = _question_texts(record, len(entries))
    messages = record["conversations"]
    if any(AUDIO_MARKER in message["content"] for message in messages) or not entries:
        return ({**record, "question_text": texts} if texts is not None else record), 0
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if len(entries) != len(users):
        raise SchemaError("audio_count_mismatch",
                          f"{len(entries)} question_audios for {len(users)} user turn(s), and no "
                          f"{AUDIO_MARKER} marker: MiniMind-O's layout has one entry per user "
                          "turn (null for a text-only turn)")
    messages = [dict(message) for message in messages]
    clips, kept_texts = [], []
    for k, (turn, clip) in enumerate(zip(users, entries, strict=True)):
        if clip is None or (isinstance(clip, bytes | bytearray | str) and not clip):
            continue
        content = messages[turn]["content"]
        transcript = None if texts is None else texts[k]
        images = content.count(IMAGE_MARKER)
        spoken = content.replace(IMAGE_MARKER, "")
        if transcript is not None and spoken.split() == transcript.split():
            content = f"{IMAGE_MARKER}\n" * images + AUDIO_MARKER
        else:
            content = f"{AUDIO_MARKER}\n{content}"
        messages[turn]["content"] = content
        clips.append(clip)
        kept_texts.append(transcript)
    matched = {**record, "conversations": messages, "question_audios": clips}
    if texts is not None:
        matched["question_text"] = kept_texts
    return matched, len(clips)


def _question_texts(record: dict, entries: int) -> list[str | None] | None:
    """`question_text` as a list of one transcript (or null) per question_audios entry."""
    value = record.get("question_text")
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if item is not None and not isinstance(item, str):
            raise SchemaError("wrong_type", f"question_text[{i}]: expected a string or null, got "
                                            f"{_type_name(item)}")
    if len(items) != entries:
        raise SchemaError("audio_count_mismatch", f"question_text: {len(items)} entries for "
                                                  f"{entries} question_audios entries")
    return list(items)


def _check_markers(messages: list[dict], marker: str, count: int, what: str) -> None:
    reason = f"{what}_count_mismatch"
    markers = 0
    for i, message in enumerate(messages):
        found = message["content"].count(marker)
        if found and message["role"] != "user":
            raise SchemaError(reason, f"conversations[{i}] ({message['role']}) holds an {marker} "
                                      "marker; markers belong in user turns")
        markers += found
    if markers != count:
        label = "image(s)" if what == "image" else "clip(s)"
        raise SchemaError(reason, f"{markers} {marker} marker(s) for {count} {label}")


def audio_refs(record: dict) -> tuple[list[bytes | str], bytes | str | None]:
    """(question clips in marker order, answer clip or None) of an omni record.

    Each clip is encoded bytes or a file path; `question_audios` may be one clip or a list.
    A value of another type, or an empty path, raises SchemaError (`wrong_type`,
    `empty_audio_path`).
    """
    value = record.get("question_audios")
    items = [] if value is None else value if isinstance(value, list) else [value]
    questions = [_audio_ref(item, f"question_audios[{i}]") for i, item in enumerate(items)]
    answer = record.get("answer_audio")
    return questions, None if answer is None else _audio_ref(answer, "answer_audio")


def _audio_ref(item: Any, where: str) -> bytes | str:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if not isinstance(item, str):
        raise SchemaError("wrong_type", f"{where}: expected bytes or a path, got "
                                        f"{_type_name(item)}")
    if not item.strip():
        raise SchemaError("empty_audio_path", f"{where}: empty path")
    return item.strip()


def _dpo_record(value: dict) -> dict:
    pair = {side: _messages(value, side) for side in ("chosen", "rejected")}
    for side, messages in pair.items():
        last = messages[-1]
        if not _is_answer(last):
            what = "an empty assistant turn" if last["role"] == "assistant" else last["role"]
            raise SchemaError(
                "bad_pair", f"{side}[{len(messages) - 1}]: last turn is {what}, not an answer"
            )
    chosen, rejected = pair["chosen"], pair["rejected"]
    if chosen[:-1] != rejected[:-1]:
        turn = _first_difference(chosen[:-1], rejected[:-1])
        raise SchemaError(
            "prompt_mismatch", f"chosen[{turn}] and rejected[{turn}] differ before the answers"
        )
    if chosen[-1] == rejected[-1]:
        raise SchemaError("identical_pair", "chosen and rejected answers are identical")
    return pair


def _first_difference(a: list[dict], b: list[dict]) -> int:
    shared = min(len(a), len(b))
    return next((i for i in range(shared) if a[i] != b[i]), shared)


def _is_answer(message: dict) -> bool:
    return message["role"] == "assistant" and bool(
        message["content"].strip() or "tool_calls" in message
    )


def _text_field(value: dict, field: str) -> str:
    text = value.get(field)
    if text is None:
        raise SchemaError("missing_field", f"{field}: missing or null")
    if not isinstance(text, str):
        raise SchemaError("wrong_type", f"{field}: expected a string, got {_type_name(text)}")
    if not text.strip():
        raise SchemaError("empty_text", f"{field}: empty or only whitespace")
    return text


def _messages(value: dict, field: str) -> list[dict]:
    """Validate the message list stored in `value[field]` (a list or a JSON string of one)."""
    messages = value.get(field)
    if messages is None:
        raise SchemaError("missing_field", f"{field}: missing or null")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except (json.JSONDecodeError, RecursionError) as err:
            detail = f"{field}: not a JSON list of messages: {err}"
            raise SchemaError("invalid_json", detail) from None
    if not isinstance(messages, list):
        raise SchemaError(
            "wrong_type", f"{field}: expected a list of messages, got {_type_name(messages)}"
        )
    if not messages:
        raise SchemaError("empty_conversation", f"{field}: no messages")
    return [_message(message, f"{field}[{i}]") for i, message in enumerate(messages)]


def _message(message: Any, where: str) -> dict:
    if not isinstance(message, dict):
        raise SchemaError("wrong_type", f"{where}: expected an object, got {_type_name(message)}")
    role = message.get("role")
    if role is None:
        raise SchemaError("missing_field", f"{where}.role: missing or null")
    if not isinstance(role, str):
        raise SchemaError("wrong_type", f"{where}.role: expected a string, got {_type_name(role)}")
    if role not in ROLES:
        allowed = ", ".join(ROLES)
        raise SchemaError("unknown_role", f"{where}.role: {role!r} is not one of {allowed}")
    tool_calls = _tool_json(message, "tool_calls", where)
    content = _content(message, where, has_tool_calls=tool_calls is not None)
    canonical = {"role": role, "content": content}
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise SchemaError(
            "wrong_type",
            f"{where}.reasoning_content: expected a string, got {_type_name(reasoning)}",
        )
    if reasoning:
        canonical["reasoning_content"] = reasoning
    tools = _tool_json(message, "tools", where)
    if tools is not None:
        canonical["tools"] = tools
    if tool_calls is not None:
        canonical["tool_calls"] = tool_calls
    return canonical


def _content(message: dict, where: str, has_tool_calls: bool) -> str:
    """The message text; an assistant turn that only calls tools may leave it out or null."""
    if "content" not in message and not has_tool_calls:
        raise SchemaError("missing_field", f"{where}.content: missing")
    content = message.get("content")
    if content is None:
        if has_tool_calls:
            return ""
        raise SchemaError("null_content", f"{where}.content: null")
    if not isinstance(content, str):
        raise SchemaError(
            "wrong_type", f"{where}.content: expected a string, got {_type_name(content)}"
        )
    return content


def _tool_json(message: dict, key: str, where: str) -> str | None:
    """`tools` / `tool_calls` as a compact JSON string, or None when absent or empty."""
    raw = message.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, str):
        parsed = _json_text(raw, "invalid_tool_json", f"{where}.{key}")
    elif isinstance(raw, list | dict):
        parsed = raw
    else:
        raise SchemaError(
            "wrong_type", f"{where}.{key}: expected JSON text, a list or an object, "
            f"got {_type_name(raw)}"
        )
    if not isinstance(parsed, list | dict):
        raise SchemaError(
            "invalid_tool_json",
            f"{where}.{key}: expected a JSON list or object, got {_type_name(parsed)}",
        )
    if not parsed:
        return None
    try:
        return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise SchemaError("invalid_tool_json", f"{where}.{key}: {err}") from None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
