"""The clean step end to end on messy input: every bad record rejected with file:line and a
reason, every good record out exactly once, duplicates traced to what they duplicate."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minimind.data.builtin import get_builtin
from minimind.data.cleaning import CleanConfig, clean_corpus, split_long_text
from minimind.data.quality import QualityConfig, quality_issue
from minimind.data.shards import iter_rows, shard_paths
from minimind.data.textnorm import detect_lang, normalize_text


def good_texts(n: int) -> list[str]:
    """Real Wikipedia summaries that pass the default quality filters (the 'good records')."""
    texts = []
    for record in get_builtin("en_wiki").build(4 * n, 0):
        text = record["text"]
        text = normalize_text(text)  # compare like with like: output text is NFKC-normalised
        if quality_issue(text, detect_lang(text), QualityConfig()) is None:
            texts.append(text)
        if len(texts) == n:
            return texts
    raise AssertionError("not enough clean sample texts")


def line(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def conversation(question: str, answer: str) -> dict:
    return {"conversations": [{"role": "user", "content": question},
                              {"role": "assistant", "content": answer}]}


@pytest.fixture
def messy(tmp_path: Path):
    texts = good_texts(12)
    raw = tmp_path / "raw"
    (raw / "pre").mkdir(parents=True)
    (raw / "chat").mkdir()
    (raw / "pairs").mkdir()
    # pretrain JSONL with BOM and CRLF, bad lines in between, and duplicates at the end
    (raw / "pre" / "mixed.jsonl").write_bytes(
        b"\xef\xbb\xbf" + line({"text": texts[0]}).replace(b"\n", b"\r\n")   # 1 good (BOM, CRLF)
        + b'{"text": "unterminated\n'                                        # 2 invalid_json
        + line({"text": texts[1]})                                           # 3 good
        + b'{"text": "bad \xff\xfe bytes"}\n'                                # 4 invalid_utf8
        + b'{"text": "nul \x00 inside"}\n'                                   # 5 nul_bytes
        + line({"txt": texts[2]})                                            # 6 missing_field
        + line({"text": None})                                               # 7 missing (null)
        + b"\n"                                                              # 8 blank: skipped
        + line({"text": texts[2]})                                           # 9 good
        + line({"text": texts[0].upper()})                                   # 10 near dup of 1
        + line({"text": texts[1]})                                           # 11 exact dup of 3
        + line({"text": "\u200b\u200b"})                                     # 12 empty after NFKC
    )
    with gzip.open(raw / "pre" / "trunc.jsonl.gz", "wb") as handle:
        for text in texts[3:9]:
            handle.write(line({"text": text}))
    whole = (raw / "pre" / "trunc.jsonl.gz").read_bytes()
    (raw / "pre" / "trunc.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    (raw / "pre" / "empty.jsonl").write_bytes(b"")
    # SFT: JSONL with schema errors, and MiniMind's Parquet layout (conversations as JSON text)
    (raw / "chat" / "sft.jsonl").write_bytes(
        line(conversation("What is a comet?", texts[9]))                            # 1 good
        + line({"conversations": [{"role": "bot", "content": "hi"}]})               # 2 unknown_role
        + line({"conversations": [{"role": "user", "content": None},
                                  {"role": "assistant", "content": "x"}]})          # 3 null_content
        + line({"conversations": []})                                               # 4 empty
        + line({"dialogue": []})                                                    # 5 missing
        + line({"conversations": [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"name": "add", "arguments": {"a": 2, "b": 3}}]},
            {"role": "tool", "content": "5"},
            {"role": "assistant", "content": "2 + 3 = 5."}]})                       # 6 good, tools
    )
    pq.write_table(pa.table({"conversations": [
        json.dumps(conversation("Tell me about it.", texts[10])["conversations"]),
        "not json at all",
        json.dumps(conversation("And this one?", texts[11])["conversations"]),
    ]}), raw / "chat" / "sft.parquet")
    (raw / "pairs" / "dpo.jsonl").write_bytes(
        line({"chosen": conversation("Best planet?", "Earth, for us.")["conversations"],
              "rejected": conversation("Best planet?", "Banana.")["conversations"]})    # 1 good
        + line({"chosen": conversation("A?", "yes")["conversations"],
                "rejected": conversation("B?", "no")["conversations"]})                # 2 mismatch
    )
    sources = [
        {"name": "pre", "kind": "pretrain", "files": [{"path": f"pre/{n}"} for n in
                                                       ("mixed.jsonl", "trunc.jsonl.gz",
                                                        "empty.jsonl")]},
        {"name": "chat", "kind": "sft", "files": [{"path": "chat/sft.jsonl"},
                                                  {"path": "chat/sft.parquet"}]},
        {"name": "pairs", "kind": "dpo", "files": [{"path": "pairs/dpo.jsonl"}]},
    ]
    return raw, sources, texts


def run_clean(raw: Path, sources: list, out: Path, **overrides) -> dict:
    return clean_corpus(sources, raw, out, CleanConfig(**overrides), progress=False)


def test_bad_input_is_rejected_with_origin_and_reason(messy, tmp_path: Path) -> None:
    raw, sources, texts = messy
    out = tmp_path / "clean"
    report = run_clean(raw, sources, out)

    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    got = {(r["origin"], r["reason"]) for r in rejects}
    truncated_at = next(r["origin"] for r in rejects if r["reason"] == "truncated_file")
    assert got == {
        ("pre/mixed.jsonl:2", "invalid_json"),
        ("pre/mixed.jsonl:4", "invalid_utf8"),
        ("pre/mixed.jsonl:5", "nul_bytes"),
        ("pre/mixed.jsonl:6", "missing_field"),
        ("pre/mixed.jsonl:7", "missing_field"),  # null counts as absent
        ("pre/mixed.jsonl:10", "near_duplicate"),
        ("pre/mixed.jsonl:11", "exact_duplicate"),
        ("pre/mixed.jsonl:12", "empty_text"),
        (truncated_at, "truncated_file"),
        ("pre/empty.jsonl:0", "empty_file"),
        ("chat/sft.jsonl:2", "unknown_role"),
        ("chat/sft.jsonl:3", "null_content"),
        ("chat/sft.jsonl:4", "empty_conversation"),
        ("chat/sft.jsonl:5", "missing_field"),
        ("chat/sft.parquet:2", "invalid_json"),
        ("pairs/dpo.jsonl:2", "prompt_mismatch"),
    }
    by_origin = {r["origin"]: r for r in rejects}
    assert by_origin["pre/mixed.jsonl:10"]["duplicate_of"] == "pre/mixed.jsonl:1"
    assert by_origin["pre/mixed.jsonl:11"]["duplicate_of"] == "pre/mixed.jsonl:3"
    assert by_origin["pre/mixed.jsonl:6"]["record"] == {"txt": texts[2]}  # inspectable, recoverable
    assert sum(report["rejects_by_reason"].values()) == len(rejects)
    assert report["rejects_by_reason"]["near_duplicate"] == 1

    # Good records out == good records in: each exactly once, wherever its split put it.
    pretrain = [r["text"] for split in ("train", "val")
                for r in iter_rows(shard_paths(out / "pretrain", split), ["text"])]
    lines_before_damage = int(truncated_at.rsplit(":", 1)[1]) - 1
    assert lines_before_damage >= 1
    expected = [texts[0], texts[1], texts[2], *texts[3:3 + lines_before_damage]]
    assert sorted(pretrain) == sorted(expected)
    sft = [json.loads(r["conversations"]) for split in ("train", "val")
           for r in iter_rows(shard_paths(out / "sft", split), ["conversations"])]
    answers = sorted(c[-1]["content"] for c in sft)
    assert answers == sorted(["2 + 3 = 5.", texts[9], texts[10], texts[11]])
    tool_turn = next(c for c in sft if c[-1]["content"] == "2 + 3 = 5.")
    calls = json.loads(tool_turn[2]["tool_calls"])
    assert calls == [{"name": "add", "arguments": {"a": 2, "b": 3}}]
    dpo = [r for split in ("train", "val")
           for r in iter_rows(shard_paths(out / "dpo", split), ["chosen", "rejected"])]
    assert len(dpo) == 1 and json.loads(dpo[0]["rejected"])[-1]["content"] == "Banana."

    assert report["by_source"]["pre"]["records_in"] == 11 + lines_before_damage + 1 + 1
    assert report["docs_out"] == len(pretrain) + len(sft) + len(dpo)


def test_cleaning_is_deterministic_and_splits_by_content(messy, tmp_path: Path) -> None:
    raw, sources, _ = messy
    first = run_clean(raw, sources, tmp_path / "a", val_fraction=0.5)
    second = run_clean(raw, sources, tmp_path / "b", val_fraction=0.5)
    assert {k: v for k, v in first.items() if k not in ("seconds", "records_per_s")} == \
        {k: v for k, v in second.items() if k not in ("seconds", "records_per_s")}
    for path in sorted((tmp_path / "a").rglob("*.parquet")):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert pq.read_table(path).equals(pq.read_table(twin))
    assert first["rows"].get("pretrain.val", 0) > 0 and first["rows"].get("pretrain.train", 0) > 0
    other_seed = run_clean(raw, sources, tmp_path / "c", val_fraction=0.5, seed=7)
    assert other_seed["rows"] != first["rows"] or any(
        not pq.read_table(p).equals(pq.read_table(tmp_path / "c" / p.relative_to(tmp_path / "a")))
        for p in sorted((tmp_path / "a").rglob("*.parquet")))


def test_val_fraction_can_be_set_per_kind(messy, tmp_path: Path) -> None:
    raw, sources, _ = messy
    base = run_clean(raw, sources, tmp_path / "a", val_fraction=0.3)
    more = run_clean(raw, sources, tmp_path / "b", val_fraction=0.3,
                     val_fraction_by_kind={"pretrain": 0.9})
    assert more["rows"].get("pretrain.val", 0) > base["rows"].get("pretrain.val", 0)
    for key in ("sft.val", "sft.train", "dpo.val", "dpo.train"):  # other kinds keep 0.3
        assert more["rows"].get(key) == base["rows"].get(key)
    total = sum(v for k, v in base["rows"].items() if k.startswith("pretrain."))
    assert total == sum(v for k, v in more["rows"].items() if k.startswith("pretrain."))


def test_media_folders_of_a_text_corpus_survive_dvc(messy, tmp_path: Path) -> None:
    """No vlm/omni source: the media folders the multimodal stages depend on exist and are not
    empty, since DVC drops empty folders on checkout and a run-cache restore."""
    from minimind.data.cleaning import EMPTY_MARKER

    raw, sources, _ = messy
    run_clean(raw, sources, tmp_path / "out")
    for folder in ("images", "audio", "vlm", "omni"):
        assert [p.name for p in (tmp_path / "out" / folder).iterdir()] == [EMPTY_MARKER]
        assert shard_paths(tmp_path / "out" / folder, "train") == []


def test_long_documents_are_split_without_losing_text() -> None:
    text = "\n".join(f"Line {i} of a long document about rivers and hills." for i in range(400))
    pieces = split_long_text(text, 1000)
    assert len(pieces) > 1 and all(len(p) <= 1000 for p in pieces)
    assert "\n".join(pieces) == text
    assert split_long_text("x" * 2500, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]


def test_unsupported_kind_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "v.jsonl").write_text('{"conversations": []}\n')
    sources = [{"name": "v", "kind": "video", "files": [{"path": "v.jsonl"}]}]
    with pytest.raises(ValueError, match="v.jsonl: cleaning 'video' records is not supported yet"):
        run_clean(tmp_path, sources, tmp_path / "out")
