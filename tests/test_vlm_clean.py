"""Image-text data through download and clean: both MiniMind-V layouts, every bad image rejected
with its reason, odd image modes normalised to RGB, every good record kept once, every unique
image stored once."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from minimind.data.cleaning import CleanConfig, clean_corpus
from minimind.data.images import (
    ImageCheckConfig,
    ImageError,
    decode_image,
    describe_bytes,
    iter_clean_images,
    normalize_image,
)
from minimind.data.records import SchemaError, check_image_markers, image_refs
from minimind.data.shards import iter_rows, shard_paths
from stages.download import build_builtin, fetch_source, write_vlm_parquet


def png(colour: tuple[int, ...] = (200, 30, 30), size: tuple[int, int] = (32, 24),
        mode: str = "RGB", **save: object) -> bytes:
    """A small image of one colour with a dark stripe (so flips and rotations show)."""
    image = Image.new(mode, size, colour)
    stripe = (0,) * len(colour) if isinstance(colour, tuple) else 0
    image.paste(stripe, (0, 0, size[0], 2))
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR header claiming another size (CRC fixed, pixels unchanged)."""
    ihdr = data[12:29]
    body = b"IHDR" + struct.pack(">II", width, height) + ihdr[12:]
    return data[:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def turn(question: str, answer: str, images: int = 1) -> list[dict]:
    return [{"role": "user", "content": "<image>\n" * images + question},
            {"role": "assistant", "content": answer}]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clean(raw: Path, sources: list[dict], out: Path, **overrides) -> dict:
    return clean_corpus(sources, raw, out, CleanConfig(**overrides), progress=False)


def rows(out: Path) -> list[dict]:
    return [row for split in ("train", "val") for row in
            iter_rows(shard_paths(out / "vlm", split), ["conversations", "images", "origin"])]


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


RED, BLUE, GREEN = png((200, 30, 30)), png((30, 30, 200)), png((30, 160, 30))


# --- the two layouts -----------------------------------------------------------------------

@pytest.fixture
def layouts(tmp_path: Path) -> tuple[Path, list[dict]]:
    """The same four conversations in MiniMind-V's Parquet layout and as JSONL with paths."""
    raw = tmp_path / "raw"
    records = [(turn("Describe the image.", "A red card."), [RED]),
               (turn("Which is bluer?", "The second.", 2), [RED, BLUE]),
               (turn("What colour?", "Green."), [GREEN]),
               (turn("And now?", "Red again."), [RED])]  # the red image a third time
    (raw / "pq").mkdir(parents=True)
    with open(raw / "pq" / "vlm.parquet", "wb") as handle:
        write_vlm_parquet(({"conversations": c, "image_bytes": i[0] if len(i) == 1 else i}
                           for c, i in records), handle)
    folder = raw / "js" / "set"
    (folder / "pics").mkdir(parents=True)
    names = {RED: "pics/red.png", BLUE: "pics/blue.png", GREEN: "pics/green.png"}
    for data, name in names.items():
        (folder / name).write_bytes(data)
    lines = [
        {"conversations": records[0][0], "image": "pics/red.png"},
        {"conversations": records[1][0], "image": "pics/red.png, pics/blue.png"},  # MiniMind-V
        {"conversations": records[2][0], "images": ["pics/green.png"]},
        {"conversations": records[3][0], "image": ["pics/red.png"]},
    ]
    (folder / "vlm.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    sources = [{"name": "pq", "kind": "vlm", "files": [{"path": "pq/vlm.parquet"}]},
               {"name": "js", "kind": "vlm", "files": [{"path": "js/set/vlm.jsonl"}]}]
    return raw, sources


def test_parquet_and_jsonl_with_paths_clean_to_the_same_rows(layouts, tmp_path: Path) -> None:
    raw, sources = layouts
    assert pq.read_schema(raw / "pq" / "vlm.parquet").field("image_bytes").type == \
        pa.list_(pa.binary())  # one record with two images makes the column a list
    out = tmp_path / "clean"
    report = clean(raw, sources[:1], out)
    assert report["records_kept"] == 4 and report["rejects_by_reason"] == {}
    red, blue, green = (normalize_image(x).sha256 for x in (RED, BLUE, GREEN))
    got = {json.loads(r["conversations"])[-1]["content"]: r["images"] for r in rows(out)}
    assert got == {"A red card.": [red], "The second.": [red, blue], "Green.": [green],
                   "Red again.": [red]}
    first = json.loads(rows(out)[0]["conversations"])[0]["content"]
    assert first.startswith("<image>\n")  # markers are kept

    stored = dict(iter_clean_images(out / "images"))
    assert sorted(stored) == sorted({red, blue, green})  # each image once
    assert report["images"] == {"stored": 3, "duplicates": 2, "rejected": 0}
    for digest, data in stored.items():
        assert sha(data) == digest and decode_image(data).mode == "RGB"
    table = pq.read_table(shard_paths(out / "images", "images")[0])
    assert table.schema.field("width").type == pa.int32()
    assert sorted(zip(table["width"].to_pylist(), table["height"].to_pylist(),
                      strict=True)) == [(32, 24)] * 3

    # JSONL with paths relative to its folder: the same rows, apart from where they came from
    json_out = tmp_path / "clean_json"
    assert clean(raw, sources[1:], json_out)["rejects_by_reason"] == {}
    strip = [(r["conversations"], r["images"]) for r in rows(out)]
    assert sorted(strip) == sorted((r["conversations"], r["images"]) for r in rows(json_out))
    assert dict(iter_clean_images(json_out / "images")) == stored


def test_exact_duplicates_go_and_same_text_with_other_image_stays(layouts, tmp_path) -> None:
    raw, sources = layouts
    out = tmp_path / "clean"
    report = clean(raw, sources, out)  # the Parquet and the JSONL hold the same records
    assert report["records_kept"] == 4 and report["rejects_by_reason"] == {"exact_duplicate": 4}
    assert {r["duplicate_of"] for r in rejects(out)} == {f"pq/vlm.parquet:{i}" for i in range(1, 5)}

    same_words = tmp_path / "same_words.parquet"
    with open(same_words, "wb") as handle:  # one question about many different images
        write_vlm_parquet(({"conversations": turn("What colour is the card?", "It is red."),
                            "image_bytes": png((200 + i, 30, 30))} for i in range(20)), handle)
    report = clean(tmp_path, [{"name": "s", "kind": "vlm",
                               "files": [{"path": "same_words.parquet"}]}], tmp_path / "s")
    assert report["records_kept"] == 20 and report["images"]["stored"] == 20


def test_records_about_one_image_share_a_split(tmp_path: Path) -> None:
    with open(tmp_path / "v.parquet", "wb") as handle:
        write_vlm_parquet(({"conversations": turn(f"Question {q}?", f"Answer {q}."),
                            "image_bytes": png((10 * i, 100, 100))}
                           for i in range(12) for q in range(4)), handle)
    out = tmp_path / "out"
    clean(tmp_path, [{"name": "v", "kind": "vlm", "files": [{"path": "v.parquet"}]}], out,
          val_fraction=0.5)
    split_of: dict[str, set[str]] = {}
    for split in ("train", "val"):
        for row in iter_rows(shard_paths(out / "vlm", split), ["images"]):
            split_of.setdefault(row["images"][0], set()).add(split)
    assert len(split_of) == 12 and all(len(s) == 1 for s in split_of.values())
    assert {next(iter(s)) for s in split_of.values()} == {"train", "val"}


# --- bad images and odd modes --------------------------------------------------------------

def cmyk_jpeg() -> bytes:
    return png((0, 255, 255, 0), mode="CMYK", format="JPEG", quality=95)  # pure red ink mix


def palette_with_transparency() -> bytes:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 20, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)  # index 0 (red) is transparent
    return buffer.getvalue()


def sixteen_bit_grey() -> bytes:
    image = Image.fromarray(np.full((20, 20), 128 * 257, dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF says: display rotated by 90 degrees (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return png((200, 200, 200), size=(40, 20), format="JPEG", exif=exif.tobytes())


@pytest.mark.parametrize(("data", "pixel", "size"), [
    (cmyk_jpeg(), (255, 0, 0), (32, 24)),
    (palette_with_transparency(), (255, 255, 255), (20, 20)),  # transparent half: white
    (png((0, 0, 255, 0), mode="RGBA"), (255, 255, 255), (32, 24)),
    (png((0, 0, 255, 128), mode="RGBA"), (127, 127, 255), (32, 24)),
    (png(90, mode="L"), (90, 90, 90), (32, 24)),
    (png((90, 200), mode="LA"), (126, 126, 126), (32, 24)),  # 90 * 200/255 + 255 * 55/255
    (sixteen_bit_grey(), (128, 128, 128), (20, 20)),  # scaled, not clipped to white
    (png((9, 99, 199), format="WEBP", lossless=True), (9, 99, 199), (32, 24)),
    (png((9, 99, 199), format="BMP"), (9, 99, 199), (32, 24)),
    (rotated_jpeg(), None, (20, 40)),  # turned upright
], ids=["cmyk", "palette-transparent", "rgba-clear", "rgba-half", "grey", "grey-alpha",
        "grey-16bit", "webp", "bmp", "exif-rotated"])
def test_odd_modes_become_plain_rgb_png(data: bytes, pixel, size) -> None:
    clean_image = normalize_image(data)
    image = Image.open(io.BytesIO(clean_image.png))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", size)
    assert (clean_image.width, clean_image.height) == size
    assert clean_image.sha256 == sha(clean_image.png)
    assert not image.info.get("icc_profile") and "exif" not in image.info
    if pixel is not None:
        got = image.getpixel((size[0] - 1, size[1] - 1))
        assert max(abs(a - b) for a, b in zip(got, pixel, strict=True)) <= 3, got


def test_same_pixels_in_other_encodings_get_one_hash() -> None:
    plain = normalize_image(png(compress_level=9))
    assert normalize_image(png(compress_level=0)).sha256 == plain.sha256
    assert normalize_image(png(format="BMP")).sha256 == plain.sha256
    assert normalize_image(png(mode="RGB", icc_profile=b"x" * 200)).sha256 == plain.sha256
    assert normalize_image(png((201, 30, 30))).sha256 != plain.sha256


@pytest.mark.parametrize(("data", "reason", "detail"), [
    (RED[: len(RED) // 2], "image_undecodable", ""),
    (RED[:-20], "image_undecodable", ""),  # IEND and the last data bytes missing
    (b"<html>404 Not Found</html>", "image_undecodable", "not an image in an accepted format"),
    (b"", "image_undecodable", ""),
    (png(size=(1, 1)), "image_too_small", "1x1"),
    (png(size=(200, 8)), "image_too_small", "200x8"),
    (with_png_size(RED, 5000, 5000), "image_too_large", "max_pixels"),
    (with_png_size(RED, 100_000, 100_000), "image_too_large", ""),  # Pillow's bomb guard
    (with_png_size(RED, 4100, 30), "image_too_large", "max_side"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "image_undecodable", ""),  # a format we never parse
], ids=["half-png", "no-iend", "html", "empty", "1x1", "thin", "5000x5000-header",
        "bomb-header", "wide-header", "eps"])
def test_bad_images_are_refused_with_a_reason(data: bytes, reason: str, detail: str) -> None:
    with pytest.raises(ImageError) as caught:
        normalize_image(data)
    assert caught.value.reason == reason and detail in caught.value.detail


def test_byte_limit_is_checked_before_decoding() -> None:
    assert len(RED) > 50
    with pytest.raises(ImageError, match="image_too_large: .* bytes > max_bytes 50"):
        normalize_image(RED, ImageCheckConfig(max_bytes=50))
    with pytest.raises(ValueError, match="min_side 50 exceeds max_side 40"):
        ImageCheckConfig(min_side=50, max_side=40)


def test_image_fields_and_markers() -> None:
    assert image_refs({"image": "a.png, sub/b.png"}) == ["a.png", "sub/b.png"]
    assert image_refs({"image": ["a, b.png"]}) == ["a, b.png"]  # a list is taken as it is
    assert image_refs({"image_bytes": b"x"}) == [b"x"] and image_refs({}) == []
    for bad, reason in [({"image_bytes": "aGVsbG8="}, "wrong_type"),
                        ({"image_bytes": [b"x", None]}, "wrong_type"),
                        ({"image": "a.png,,b.png"}, "empty_image_path"),
                        ({"image": 3}, "wrong_type"),
                        ({"image": "a.png", "image_bytes": b"x"}, "conflicting_fields")]:
        with pytest.raises(SchemaError) as caught:
            image_refs(bad)
        assert caught.value.reason == reason, bad
    check_image_markers(turn("q", "a", 2), 2)
    with pytest.raises(SchemaError, match="image_count_mismatch: 2 <image> marker"):
        check_image_markers(turn("q", "a", 2), 1)
    with pytest.raises(SchemaError, match=r"conversations\[1\] \(assistant\)"):
        check_image_markers([{"role": "user", "content": "<image>q"},
                             {"role": "assistant", "content": "<image>"}], 2)


def test_describe_bytes_names_format_size_and_hash() -> None:
    assert describe_bytes(RED) == f"<PNG 32x24, {len(RED)} B, sha256 {sha(RED)[:12]}>"
    assert describe_bytes(b"x" * 4200).startswith("<not an image, 4.2 kB, sha256 ")


def test_bad_record_matrix_rejects_with_reasons_and_keeps_every_good_one(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "mix"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "ok.png").write_bytes(GREEN)
    (folder / "img" / "cut.png").write_bytes(GREEN[: len(GREEN) // 2])
    good = {  # answer -> (images field, count of images)
        "ok path": ({"image": "img/ok.png"}, 1),
        "ok cmyk": ({"image_bytes": cmyk_jpeg()}, 1),
        "ok palette": ({"image_bytes": palette_with_transparency()}, 1),
        "ok rgba": ({"image_bytes": png((1, 2, 3, 4), mode="RGBA")}, 1),
        "ok grey": ({"image_bytes": png(77, mode="L")}, 1),
        "ok two": ({"image_bytes": [BLUE, RED]}, 2),
    }
    bad = {  # answer -> (images field, images the markers announce, reason)
        "cut": ({"image_bytes": RED[: len(RED) // 2]}, 1, "image_undecodable"),
        "text": ({"image_bytes": b"GIF89a but not really"}, 1, "image_undecodable"),
        "tiny": ({"image_bytes": png(size=(1, 1))}, 1, "image_too_small"),
        "huge": ({"image_bytes": with_png_size(RED, 9000, 9000)}, 1, "image_too_large"),
        "second bad": ({"image_bytes": [BLUE, b"junk"]}, 2, "image_undecodable"),
        "missing": ({"image": "img/nope.png"}, 1, "image_missing"),
        "cut file": ({"image": "img/cut.png"}, 1, "image_undecodable"),
        "extra marker": ({"image_bytes": BLUE}, 2, "image_count_mismatch"),
        "no marker": ({"image_bytes": BLUE}, 0, "image_count_mismatch"),
        "no image": ({}, 1, "no_image"),
        "two fields": ({"image": "img/ok.png", "images": ["img/ok.png"]}, 1,
                       "conflicting_fields"),
    }
    lines = [{"conversations": turn("What is it?", answer, n), **field}
             for answer, (field, n) in good.items()]
    lines += [{"conversations": turn("What is it?", answer, n), **field}
              for answer, (field, n, _) in bad.items()]
    with open(folder / "mix.parquet", "wb") as handle:  # bytes need Parquet, paths JSONL
        write_vlm_parquet(({"conversations": x["conversations"], "image_bytes": x["image_bytes"]}
                           for x in lines if set(x) == {"conversations", "image_bytes"}), handle)
    (folder / "mix.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines
                                              if "image_bytes" not in x))
    out = tmp_path / "clean"
    report = clean(tmp_path / "raw", [{"name": "mix", "kind": "vlm", "files": [
        {"path": "mix/mix.parquet"}, {"path": "mix/mix.jsonl"}]}], out)

    kept = {json.loads(r["conversations"])[-1]["content"]: r["images"] for r in rows(out)}
    assert sorted(kept) == sorted(good)  # no good record lost
    assert all(len(kept[a]) == n for a, (_, n) in good.items())
    by_answer = {}
    for reject in rejects(out):  # the raw record: from Parquet, conversations are JSON text
        conversation = reject["record"]["conversations"]
        if isinstance(conversation, str):
            conversation = json.loads(conversation)
        by_answer[conversation[-1]["content"]] = reject
    assert {answer: r["reason"] for answer, r in by_answer.items()} == {
        answer: reason for answer, (_, _, reason) in bad.items()}
    assert all(r["origin"].startswith(("mix/mix.parquet:", "mix/mix.jsonl:"))
               for r in by_answer.values())
    assert by_answer["second bad"]["detail"].startswith("image 2 of 2: ")
    assert by_answer["missing"]["detail"].startswith("image 1 of 1: img/nope.png: no such file")
    image_reasons = {"image_undecodable", "image_too_small", "image_too_large", "image_missing"}
    bad_images = [r for r in bad.values() if r[2] in image_reasons]
    assert report["images"]["rejected"] == len(bad_images) == 7
    assert report["records_in"] == len(lines) and report["records_kept"] == len(good)

    text = (out / "rejects.jsonl").read_text()  # bytes are described, never dumped
    assert "<PNG 1x1, " in text and "<not an image, " in text and "PNG\\r\\n" not in text
    assert by_answer["second bad"]["record"]["image_bytes"][0] == describe_bytes(BLUE)


def test_evaluation_fields_reach_the_clean_rows_and_malformed_ones_are_rejected(tmp_path) -> None:
    folder = tmp_path / "raw" / "typed"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "red.png").write_bytes(RED)
    two = turn("What colour?", "Red.") + [{"role": "user", "content": "Describe it."},
                                           {"role": "assistant", "content": "A red card."}]
    typed = {"answer_types": ["colour", None], "answer_choices": [["red", "blue"], None]}
    good = [{"conversations": two, "image": "img/red.png", **typed},  # lists in JSONL
            {"conversations": turn("Where?", "left"), "image": "img/red.png"}]  # no fields
    bad = {  # field -> reason, for the same two-answer conversation
        "short": ({"answer_types": ["colour"]}, "answer_count_mismatch"),
        "number": ({"answer_types": [1, None]}, "wrong_type"),
        "one choice": ({"answer_types": ["colour", None], "answer_choices": [["red"], None]},
                       "bad_answer_choices"),
        "not a choice": ({"answer_types": ["colour", None],
                          "answer_choices": [["green", "blue"], None]}, "answer_not_in_choices"),
    }
    lines = good + [{"conversations": two, "image": "img/red.png", **field}
                    for field, _ in bad.values()]
    (folder / "typed.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with open(folder / "typed.parquet", "wb") as handle:  # JSON text columns, as download writes
        write_vlm_parquet([{"conversations": two, "image_bytes": BLUE, **typed},
                           {"conversations": two, "image_bytes": GREEN,
                            "answer_types": ["colour"]}], handle)
    assert pq.read_schema(folder / "typed.parquet").field("answer_types").type == pa.string()
    out = tmp_path / "clean"
    report = clean(tmp_path / "raw", [{"name": "typed", "kind": "vlm", "files": [
        {"path": "typed/typed.jsonl"}, {"path": "typed/typed.parquet"}]}], out)

    assert report["records_kept"] == 3
    assert report["rejects_by_reason"] == {"answer_count_mismatch": 2, "wrong_type": 1,
                                           "bad_answer_choices": 1, "answer_not_in_choices": 1}
    got = [r for split in ("train", "val") for r in iter_rows(
        shard_paths(out / "vlm", split), ["conversations", "answer_types", "answer_choices"])]
    fields = sorted((r["answer_types"], r["answer_choices"]) for r in got
                    if r["answer_types"] is not None)
    assert fields == [('["colour", null]', '[["red", "blue"], null]')] * 2  # JSONL and Parquet
    assert sum(r["answer_types"] is None and r["answer_choices"] is None for r in got) == 1
    by_origin = {r["origin"]: r for r in rejects(out)}
    assert {origin: r["reason"] for origin, r in by_origin.items()} == {
        "typed/typed.jsonl:3": "answer_count_mismatch", "typed/typed.jsonl:4": "wrong_type",
        "typed/typed.jsonl:5": "bad_answer_choices", "typed/typed.jsonl:6": "answer_not_in_choices",
        "typed/typed.parquet:2": "answer_count_mismatch"}
    assert by_origin["typed/typed.jsonl:3"]["detail"] == (
        "answer_types: 1 entries for 2 assistant turn(s)")


# --- download ------------------------------------------------------------------------------

def fake_ctx(root: Path) -> SimpleNamespace:
    """What fetch_source reads of a StageContext (pipelines.params would import torch)."""
    download = SimpleNamespace(seed=0, retries=0, backoff_s=0.0, timeout_s=1.0)
    return SimpleNamespace(params=SimpleNamespace(download=download), root=root,
                           path=lambda relative: root / relative)


def source(name: str, uri: str, kind: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, uri=uri, kind=kind, sha256=None, limit=None,
                           repo_type="dataset")


def test_folder_source_brings_its_images_and_cleans(layouts, tmp_path: Path) -> None:
    raw, _ = layouts
    (raw / "js" / "set" / "notes.txt").write_text("not data")
    out = tmp_path / "data" / "raw"
    photos = source("photos", f"file://{raw / 'js'}", "vlm")
    files, media = fetch_source(fake_ctx(tmp_path), photos, out)
    assert [f["path"] for f in files] == ["photos/set/vlm.jsonl"]
    assert sorted(f["path"] for f in media) == [f"photos/set/pics/{c}.png"
                                                 for c in ("blue", "green", "red")]
    assert all(f["sha256"] == sha((out / f["path"]).read_bytes()) for f in media)
    assert not (out / "photos" / "set" / "notes.txt").exists()
    report = clean(out, [{"name": "photos", "kind": "vlm", "files": files}], tmp_path / "clean")
    assert report["records_kept"] == 4 and report["images"]["stored"] == 3

    sft = source("chat", f"file://{raw / 'js'}", "sft")
    assert fetch_source(fake_ctx(tmp_path), sft, tmp_path / "other")[1] == []  # text: no media


def test_builtin_vlm_source_is_written_as_minimind_v_parquet(tmp_path: Path) -> None:
    fetched = build_builtin("scene_captions", 12, 0, tmp_path / "scene_captions")
    assert fetched.path == tmp_path / "scene_captions.parquet"
    schema = pq.read_schema(fetched.path)
    assert schema.field("conversations").type == pa.string()
    assert schema.field("image_bytes").type == pa.binary()  # one image per record
    assert fetched.sha256 == sha(fetched.path.read_bytes())
    vqa = build_builtin("scene_vqa", 60, 0, tmp_path / "scene_vqa")
    assert pq.read_schema(vqa.path).field("image_bytes").type == pa.list_(pa.binary())
    report = clean(tmp_path, [{"name": n, "kind": "vlm", "files": [{"path": f"{n}.parquet"}]}
                              for n in ("scene_captions", "scene_vqa")], tmp_path / "clean")
    assert report["records_kept"] == 72 and report["rejects_by_reason"] == {}
    assert pq.read_schema(vqa.path).field("answer_types").type == pa.string()
    typed = [r for split in ("train", "val") for r in iter_rows(
        shard_paths(tmp_path / "clean" / "vlm", split), ["source", "answer_types"])]
    assert all((r["answer_types"] is not None) == (r["source"] == "scene_vqa") for r in typed)
    references = [sha for r in rows(tmp_path / "clean") for sha in r["images"]]
    unique = set(references)
    assert report["images"]["stored"] == len(unique) == len(
        dict(iter_clean_images(tmp_path / "clean" / "images")))
    # The captions show the first pictures the one-image questions show: stored once each.
    assert report["images"]["duplicates"] == len(references) - len(unique) == 12
    text = build_builtin("wiki_qa", 3, 0, tmp_path / "wiki_qa")
    assert text.path.name == "wiki_qa.jsonl" and len(text.path.read_text().splitlines()) == 3
