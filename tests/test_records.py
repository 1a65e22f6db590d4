"""Record schemas (every reason code), canonical forms, and text normalisation."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimind.data.records import ROLES, SchemaError, validate_record
from minimind.data.textnorm import detect_lang, normalize_record, normalize_text

USER = {"role": "user", "content": "What is 2 + 2?"}
ANSWER = {"role": "assistant", "content": "4"}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
CALLS = [{"name": "add", "arguments": {"a": 2, "b": 2}}]


def reason_of(kind, value) -> tuple[str, str]:
    with pytest.raises(SchemaError) as caught:
        validate_record(kind, value)
    return caught.value.reason, caught.value.detail


# --- pretrain --------------------------------------------------------------------------------


def test_pretrain_keeps_only_text():
    assert validate_record("pretrain", {"text": "Hello world.", "source": "x", "id": 3}) == {
        "text": "Hello world."
    }


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        ({"content": "wrong key"}, "missing_field", "text: missing or null"),
        ({"text": None}, "missing_field", "text: missing or null"),
        ({"text": 42}, "wrong_type", "text: expected a string, got int"),
        ({"text": ["a"]}, "wrong_type", "text: expected a string, got list"),
        ({"text": " \n\t "}, "empty_text", "text: empty or only whitespace"),
        ({"text": ""}, "empty_text", "text: empty or only whitespace"),
    ],
)
def test_pretrain_rejects(value, reason, detail):
    assert reason_of("pretrain", value) == (reason, detail)


def test_record_that_is_not_an_object_and_unknown_kind():
    assert reason_of("sft", ["not", "a", "dict"]) == (
        "wrong_type", "record: expected an object, got list"
    )
    with pytest.raises(ValueError, match="unknown data kind 'rlhf'"):
        validate_record("rlhf", {"text": "x"})


# --- sft ---------------------------------------------------------------------------------------


def test_sft_canonical_form_drops_unknown_keys_and_empty_optionals():
    value = {
        "id": "abc",
        "conversations": [
            {"role": "system", "content": "Be brief.", "tools": None, "tool_calls": "",
             "reasoning_content": None, "name": "ignored"},
            {**USER, "reasoning_content": ""},
            {**ANSWER, "reasoning_content": "2 plus 2 is 4."},
        ],
    }
    assert validate_record("sft", value) == {
        "conversations": [
            {"role": "system", "content": "Be brief."},
            USER,
            {**ANSWER, "reasoning_content": "2 plus 2 is 4."},
        ]
    }


def test_tools_and_tool_calls_become_compact_json_strings():
    as_objects = {"conversations": [
        {"role": "system", "content": "You can add.", "tools": TOOLS},
        USER,
        {"role": "assistant", "content": None, "tool_calls": CALLS},
        {"role": "tool", "content": "4"},
        ANSWER,
    ]}
    as_strings = {"conversations": [
        {"role": "system", "content": "You can add.", "tools": json.dumps(TOOLS, indent=2)},
        USER,
        {"role": "assistant", "tool_calls": json.dumps(CALLS)},
        {"role": "tool", "content": "4"},
        ANSWER,
    ]}
    expected_tools = (
        '[{"type":"function","function":{"name":"add","parameters":{"type":"object"}}}]'
    )
    expected_calls = '[{"name":"add","arguments":{"a":2,"b":2}}]'
    for value in (as_objects, as_strings):
        messages = validate_record("sft", value)["conversations"]
        assert messages[0]["tools"] == expected_tools
        assert messages[2] == {"role": "assistant", "content": "", "tool_calls": expected_calls}


def test_a_tool_call_alone_counts_as_an_assistant_answer():
    value = {"conversations": [USER, {"role": "assistant", "content": "", "tool_calls": CALLS}]}
    assert validate_record("sft", value)["conversations"][1]["tool_calls"]


def test_conversations_as_json_string_from_parquet_are_parsed():
    messages = [USER, ANSWER]
    as_string = {"conversations": json.dumps(messages, ensure_ascii=False)}
    assert validate_record("sft", as_string) == {"conversations": messages}


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        ({"messages": [USER, ANSWER]}, "missing_field", "conversations: missing or null"),
        ({"conversations": {"role": "user"}}, "wrong_type",
         "conversations: expected a list of messages, got dict"),
        ({"conversations": "[{broken"}, "invalid_json", "conversations: not a JSON list"),
        ({"conversations": []}, "empty_conversation", "conversations: no messages"),
        ({"conversations": "[]"}, "empty_conversation", "conversations: no messages"),
        ({"conversations": [USER, "4"]}, "wrong_type",
         "conversations[1]: expected an object, got str"),
        ({"conversations": [USER, {"content": "4"}]}, "missing_field",
         "conversations[1].role: missing or null"),
        ({"conversations": [USER, {"role": 1, "content": "4"}]}, "wrong_type",
         "conversations[1].role: expected a string, got int"),
        ({"conversations": [USER, ANSWER, {"role": "bot", "content": "hi"}]}, "unknown_role",
         "conversations[2].role: 'bot' is not one of system, user, assistant, tool"),
        ({"conversations": [{"role": "user"}, ANSWER]}, "missing_field",
         "conversations[0].content: missing"),
        ({"conversations": [USER, {"role": "assistant", "content": None}]}, "null_content",
         "conversations[1].content: null"),
        ({"conversations": [USER, {"role": "assistant", "content": [{"text": "4"}]}]},
         "wrong_type", "conversations[1].content: expected a string, got list"),
        ({"conversations": [USER, {**ANSWER, "reasoning_content": 5}]}, "wrong_type",
         "conversations[1].reasoning_content: expected a string, got int"),
        ({"conversations": [USER]}, "no_assistant_turn",
         "conversations: no assistant turn with content or tool_calls"),
        ({"conversations": [USER, {"role": "assistant", "content": "  "}]}, "no_assistant_turn",
         "conversations: no assistant turn with content or tool_calls"),
        ({"conversations": [{**USER, "tools": "{not json"}, ANSWER]}, "invalid_tool_json",
         "conversations[0].tools: Expecting property name"),
        ({"conversations": [USER, {**ANSWER, "tool_calls": '"just a string"'}]},
         "invalid_tool_json", "conversations[1].tool_calls: expected a JSON list or object"),
        ({"conversations": [USER, {**ANSWER, "tool_calls": 12}]}, "wrong_type",
         "conversations[1].tool_calls: expected JSON text, a list or an object, got int"),
    ],
)
def test_sft_rejects(value, reason, detail):
    got_reason, got_detail = reason_of("sft", value)
    assert got_reason == reason
    assert got_detail.startswith(detail)


def test_every_role_is_accepted():
    messages = [{"role": role, "content": f"{role} text"} for role in ROLES]
    assert validate_record("sft", {"conversations": messages})["conversations"] == messages


# --- dpo -----------------------------------------------------------------------------------


def test_dpo_canonical_pair():
    value = {"chosen": [USER, ANSWER], "rejected": json.dumps([USER, {**ANSWER, "content": "5"}]),
             "score": 0.3}
    assert validate_record("dpo", value) == {
        "chosen": [USER, ANSWER],
        "rejected": [USER, {**ANSWER, "content": "5"}],
    }


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        ({"chosen": [USER, ANSWER]}, "missing_field", "rejected: missing or null"),
        ({"chosen": [USER, ANSWER], "rejected": []}, "empty_conversation", "rejected: no messages"),
        ({"chosen": [USER, ANSWER], "rejected": [USER]}, "bad_pair",
         "rejected[0]: last turn is user, not an answer"),
        ({"chosen": [USER, {**ANSWER, "content": ""}], "rejected": [USER, ANSWER]}, "bad_pair",
         "chosen[1]: last turn is an empty assistant turn, not an answer"),
        ({"chosen": [USER, ANSWER], "rejected": [{**USER, "content": "2+2?"}, ANSWER]},
         "prompt_mismatch", "chosen[0] and rejected[0] differ before the answers"),
        ({"chosen": [{"role": "system", "content": "S"}, USER, ANSWER],
          "rejected": [USER, {**ANSWER, "content": "5"}]},
         "prompt_mismatch", "chosen[0] and rejected[0] differ before the answers"),
        ({"chosen": [USER, ANSWER], "rejected": [USER, ANSWER]}, "identical_pair",
         "chosen and rejected answers are identical"),
        ({"chosen": [USER, ANSWER], "rejected": [USER, {"role": "robot", "content": "5"}]},
         "unknown_role", "rejected[1].role: 'robot' is not one of"),
    ],
)
def test_dpo_rejects(value, reason, detail):
    got_reason, got_detail = reason_of("dpo", value)
    assert got_reason == reason
    assert got_detail.startswith(detail)


# --- multimodal ------------------------------------------------------------------------------


def test_vlm_and_omni_keep_their_media_fields_untouched():
    conversation = [{"role": "user", "content": "<image>\n描述图片"}, ANSWER]
    row = {
        "conversations": json.dumps(conversation, ensure_ascii=False),
        "image_bytes": b"\x89PNG\r\n",
        "images": ["a.png", "b.png"],
        "question_audios": [b"RIFF...."],
        "answer_audios": [[1, 2, 3, 4, 5, 6, 7, 8]],
        "spk_emb": [0.5, -0.5],
        "unrelated": "dropped",
    }
    assert validate_record("vlm", row) == {
        "conversations": conversation,
        "image_bytes": b"\x89PNG\r\n",
        "images": ["a.png", "b.png"],
    }
    omni = validate_record("omni", row)
    assert omni["question_audios"] is row["question_audios"]
    assert omni["answer_audios"] is row["answer_audios"]
    assert set(omni) == {
        "conversations", "image_bytes", "images", "question_audios", "answer_audios", "spk_emb"
    }
    # sft has no media: the same row keeps only its conversation
    assert validate_record("sft", row) == {"conversations": conversation}


def test_vlm_conversations_are_checked_like_sft():
    assert reason_of("vlm", {"conversations": [{"role": "user", "content": "<image>"}],
                             "image_bytes": b"x"})[0] == "no_assistant_turn"


# --- evaluation fields -----------------------------------------------------------------------

QA = [{"role": "user", "content": "<image>\nWhat colour?"},
      {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Describe it."},
      {"role": "assistant", "content": "A red circle on grey."}]


def test_answer_fields_are_kept_canonical_per_assistant_turn():
    record = {"conversations": QA, "image_bytes": b"x", "answer_types": [" colour ", None],
              "answer_choices": json.dumps([["red", "blue"], None])}  # JSON text, as in Parquet
    for kind in ("vlm", "omni"):
        assert validate_record(kind, record) == {
            "conversations": QA, "image_bytes": b"x", "answer_types": ["colour", None],
            "answer_choices": [["red", "blue"], None]}
    plain = validate_record("vlm", {"conversations": QA, "image_bytes": b"x",
                                    "answer_types": None, "answer_choices": "null"})
    assert set(plain) == {"conversations", "image_bytes"}  # null: no fields
    assert "answer_types" not in validate_record("sft", record)  # only vlm and omni keep them


@pytest.mark.parametrize(("fields", "reason", "detail"), [
    ({"answer_types": ["colour"]}, "answer_count_mismatch",
     "answer_types: 1 entries for 2 assistant turn(s)"),
    ({"answer_choices": [None, None, None]}, "answer_count_mismatch",
     "answer_choices: 3 entries for 2 assistant turn(s)"),
    ({"answer_types": "colour"}, "invalid_json", "answer_types: not a JSON list"),
    ({"answer_types": {"0": "colour"}}, "wrong_type", "answer_types: expected a list"),
    ({"answer_types": ["colour", 3]}, "wrong_type",
     "answer_types[1]: expected a type name or null, got int"),
    ({"answer_types": ["", None]}, "wrong_type", "answer_types[0]: empty type name"),
    ({"answer_types": ["colour", None], "answer_choices": ["red", None]}, "wrong_type",
     "answer_choices[0]: expected a list of answers or null, got str"),
    ({"answer_types": ["colour", None], "answer_choices": [["red", 1], None]}, "wrong_type",
     "answer_choices[0][1]: expected a string, got int"),
    ({"answer_types": ["colour", None], "answer_choices": [["red"], None]},
     "bad_answer_choices", "answer_choices[0]: needs at least two distinct"),
    ({"answer_types": ["colour", None], "answer_choices": [["red", "Red."], None]},
     "bad_answer_choices", "answer_choices[0]: needs at least two distinct"),
    ({"answer_choices": [["red", "blue"], None]}, "bad_answer_choices",
     "answer_choices[0]: choices need a type in answer_types[0]"),
    ({"answer_types": ["open", None], "answer_choices": [["red", "blue"], None]},
     "bad_answer_choices", "answer_choices[0]: choices need a type"),
    ({"answer_types": ["colour", None], "answer_choices": [["green", "blue"], None]},
     "answer_not_in_choices", "answer_choices[0]: the answer 'Red.' is not one of the choices"),
])
def test_malformed_answer_fields_are_rejected_with_a_reason(fields, reason, detail):
    got = reason_of("vlm", {"conversations": QA, "image_bytes": b"x", **fields})
    assert got[0] == reason and got[1].startswith(detail), got


def test_answer_choices_are_normalised_like_the_answers():
    record = validate_record("vlm", {"conversations": [USER, {**ANSWER, "content": "４"}],
                                     "image_bytes": b"x", "answer_types": ["count"],
                                     "answer_choices": [["３", "４"]]})
    assert normalize_record("vlm", record)["answer_choices"] == [["3", "4"]]


# --- normalisation ---------------------------------------------------------------------------


def test_nfkc_folds_full_width_and_compatibility_characters():
    assert normalize_text("Ｈｅｌｌｏ，ＷＯＲＬＤ！１２３") == "Hello,WORLD!123"
    assert normalize_text("wait…") == "wait..."
    assert normalize_text("ﬁne ½") == "fine 1⁄2"
    assert normalize_text("a\u00a0b\u3000c") == "a b c"


def test_nfc_and_none_forms():
    decomposed = "cafe\u0301 Ｈｅｌｌｏ"
    assert normalize_text(decomposed, "NFC") == "café Ｈｅｌｌｏ"
    assert normalize_text(decomposed, "none") == decomposed
    assert normalize_text(decomposed, "NFKC") == "café Hello"


def test_line_breaks_become_lf_and_trailing_spaces_go():
    text = "  one  \r\ntwo\t\rthree\u2028four\x0cfive \n\n  six  "
    assert normalize_text(text) == "one\ntwo\nthree\nfour\nfive\n\n  six"


def test_control_and_zero_width_characters_are_removed_but_tab_and_newline_stay():
    text = "\ufeffa\x00b\x07c\x1bd\x7fe\x85f\u200bg\u2060h\u00adi\tj\nk\ud800l"
    # \x85 (NEL) is a line break, the rest are removed
    assert normalize_text(text) == "abcde\nfghi\tj\nkl"


def test_zero_width_joiners_are_kept_for_emoji_sequences():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert normalize_text(family) == family


def test_normalize_record_touches_text_fields_only():
    tools = '[{"name":"ｆｕｌｌ"}]'
    record = validate_record("sft", {"conversations": [
        {"role": "system", "content": "Ｂｅ  \r\nbrief", "tools": tools},
        {"role": "user", "content": "\u200bhi"},
        {"role": "assistant", "content": "ok\x00", "reasoning_content": "ｔｈｉｎｋ"},
    ]})
    assert normalize_record("sft", record)["conversations"] == [
        {"role": "system", "content": "Be\nbrief", "tools": tools},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok", "reasoning_content": "think"},
    ]
    assert normalize_record("pretrain", {"text": "Ｔｅｘｔ\r\n"}) == {"text": "Text"}


def test_normalize_record_keeps_media_and_handles_dpo():
    vlm = validate_record("vlm", {"conversations": [USER, {**ANSWER, "content": "４"}],
                                  "image_bytes": b"\x00\xff"})
    assert normalize_record("vlm", vlm) == {"conversations": [USER, ANSWER],
                                            "image_bytes": b"\x00\xff"}
    full_width_four, full_width_five = {**ANSWER, "content": "４"}, {**ANSWER, "content": "５"}
    dpo = {"chosen": [USER, full_width_four], "rejected": [USER, full_width_five]}
    assert normalize_record("dpo", dpo) == {
        "chosen": [USER, ANSWER], "rejected": [USER, {**ANSWER, "content": "5"}]
    }


def test_normalize_record_rejects_text_that_was_only_invisible_characters():
    with pytest.raises(SchemaError) as caught:
        normalize_record("pretrain", {"text": "\u200b\ufeff\x00"})
    assert caught.value.reason == "empty_text"
    with pytest.raises(SchemaError) as caught:
        normalize_record("sft", {"conversations": [USER, {**ANSWER, "content": "\u200b"}]})
    assert caught.value.reason == "no_assistant_turn"


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("The quick brown fox jumps over the lazy dog.", "en"),
        ("北京是中华人民共和国的首都。", "zh"),
        ("我在学习 machine learning 和 deep learning。", "zh"),
        ("The Great Wall (长城) is a series of fortifications in China.", "en"),
        ("１９９８年，中国经济继续保持增长。", "zh"),
        ("私は学生です。", "other"),
        ("Привет, как дела? Всё хорошо.", "other"),
        ("12345 67890 !!!", "other"),
        ("", "other"),
    ],
)
def test_detect_lang(text, lang):
    assert detect_lang(text) == lang


# --- property: any JSON-like value either validates or raises SchemaError ------------------

FIELDS = ["text", "conversations", "chosen", "rejected", "role", "content",
          "reasoning_content", "tools", "tool_calls", "image_bytes", "answer_types",
          "answer_choices"]
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
              st.sampled_from(list(ROLES) + ["[]", "{}", '[{"role": "user", "content": ""}]'])),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS), children, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["pretrain", "sft", "dpo", "vlm", "omni"]), json_like)
def test_arbitrary_values_never_crash_validation_or_normalisation(kind, value):
    try:
        record = validate_record(kind, value)
    except SchemaError as err:
        assert re.fullmatch(r"[a-z_]+", err.reason)
        return
    try:
        normalized = normalize_record(kind, record)
    except SchemaError:
        return
    assert normalize_record(kind, normalized) == normalized  # normalising twice changes nothing
