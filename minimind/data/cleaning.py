"""Turning raw downloads into clean, deduplicated, split Parquet shards.

Each raw record goes through: read (JSONL/.gz/Parquet) -> schema validation -> Unicode
normalisation -> length handling -> quality filters (pretrain text) -> exact and near-duplicate
removal -> deterministic train/val split -> a Parquet shard. Nothing is dropped silently:
every rejected record is written to the rejects file with its source file:line, the rule that
rejected it and the record itself (media bytes replaced by a short description), and counted
by reason in the report.

vlm records also have their images checked and normalised (`minimind.data.images`): one
`<image>` marker per image, every image decodable, within the size limits and converted to
RGB PNG, or the record is rejected. Rows store the images' sha256 (`images` column) and each
unique image is stored once in `images/`. Records are deduplicated exactly on their text plus
image hashes (text similarity says nothing about whether two images are alike, so near-dup is
off for them), and split by their image hashes rather than their text, so the conversations
about one image land in the same split and held-out images are unseen in training. The
optional evaluation fields (`answer_types`, `answer_choices`; see `minimind.data.records`)
are checked against the assistant turns (a malformed one rejects the record with its
reason) and kept in the rows as JSON text (null when the record has none), for eval_vlm and
eval_omni to read.

omni records (MiniMind-O) are vlm records plus audio (`minimind.data.audio`): one `<audio>`
marker per question clip, every clip decodable, within the duration limits and normalised to
16 kHz mono PCM16 WAV, and an optional spoken answer. Rows add the clips' sha256
(`question_audios`, `answer_audio`) and each unique clip is stored once in `audio/`. The image
may be absent (a transcription request is audio only); such records split by their text,
which holds the clips' hashes. MiniMind-O's own Parquet layout (no `<audio>` marker, one
`question_audios` entry per user turn) is first given its markers by
`minimind.data.records.match_turn_audios`; its transcripts (`question_text`, where an export
has them) are kept in the rows, one per clip. Its Mimi-code fields (`answer_audios`,
`ref_audios`) and `spk_emb` are dropped, not the record. By-source counts of the kept rows:
`omni.records_matched` / `omni.turns_matched` (markers placed), `omni.answer_codes_dropped`,
`omni.ref_audios_dropped`, `omni.spk_emb_dropped` (rows that had them).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from minimind.data.audio import (
    AudioCheckConfig,
    AudioError,
    AudioStore,
    CleanAudio,
    describe_audio,
    normalize_audio,
    read_audio_ref,
)
from minimind.data.dedup import DedupConfig, Deduplicator
from minimind.data.images import (
    CleanImage,
    ImageCheckConfig,
    ImageError,
    ImageStore,
    describe_bytes,
    normalize_image,
    read_image_ref,
)
from minimind.data.quality import QualityConfig, quality_issue
from minimind.data.readers import ReadIssue, iter_records
from minimind.data.records import (
    ANSWER_FIELDS,
    AUDIO_MARKER,
    IMAGE_MARKER,
    SchemaError,
    audio_refs,
    check_audio_markers,
    check_image_markers,
    image_refs,
    match_turn_audios,
    validate_record,
)
from minimind.data.shards import ShardWriter, UniqueRowStore
from minimind.data.textnorm import detect_lang, normalize_record

CLEANABLE_KINDS = ("pretrain", "sft", "dpo", "vlm", "omni")
MEDIA_KINDS = ("vlm", "omni")
_META = [("lang", pa.string()), ("source", pa.string()), ("origin", pa.string())]
_ANSWERS = [(field, pa.string()) for field in ANSWER_FIELDS]  # JSON text, null when absent
SCHEMAS = {
    "pretrain": pa.schema([("text", pa.string()), *_META]),
    "sft": pa.schema([("conversations", pa.string()), *_META]),
    "dpo": pa.schema([("chosen", pa.string()), ("rejected", pa.string()), *_META]),
    "vlm": pa.schema([("conversations", pa.string()), ("images", pa.list_(pa.string())),
                      *_ANSWERS, *_META]),
    "omni": pa.schema([("conversations", pa.string()), ("images", pa.list_(pa.string())),
                       ("question_audios", pa.list_(pa.string())), ("answer_audio", pa.string()),
                       ("question_text", pa.list_(pa.string())),  # one per clip; null: none
                       *_ANSWERS, *_META]),
}
IMAGES_DIR = "images"
AUDIO_DIR = "audio"
EMPTY_MARKER = "EMPTY"  # the one file of a media folder no record filled (see `close`)
SPLITS = ("train", "val")


class CleanConfig(BaseModel):
    """The clean stage's knobs (params.yaml `clean`)."""

    model_config = ConfigDict(extra="forbid")

    unicode_form: Literal["NFKC", "NFC", "none"] = "NFKC"
    val_fraction: float = Field(default=0.05, ge=0, lt=1, description="held-out share per kind")
    val_fraction_by_kind: dict[Literal[CLEANABLE_KINDS], Annotated[float, Field(ge=0, lt=1)]] = \
        Field(default={}, description="overrides of val_fraction for some kinds (a small "
                                      "corpus needs a larger share to be measured on)")
    max_chars: int = Field(default=4000, ge=16,
                           description="pretrain docs longer than this are split at line breaks")
    max_conversation_chars: int = Field(default=8000, ge=16,
                                        description="longer SFT/DPO records are rejected")
    shard_rows: int = Field(default=50_000, ge=1, description="rows per Parquet shard")
    seed: int = Field(default=42, description="salt of the deterministic train/val split")
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    images: ImageCheckConfig = ImageCheckConfig()
    audio: AudioCheckConfig = AudioCheckConfig()


@dataclass
class Doc:
    """One output row in the making: its columns, the text that identifies it, its language,
    and the checked images and clips it refers to (vlm, omni), stored when the row is kept."""

    columns: dict[str, Any]
    text: str
    lang: str
    origin: str
    images: tuple[CleanImage, ...] = ()
    audios: tuple[CleanAudio, ...] = ()
    notes: tuple[tuple[str, int], ...] = ()  # by-source counts, added if it is kept


# MiniMind-O fields that nothing here trains on (Mimi codes, a speaker embedding): dropped
# from the rows, counted per source as `omni.<name>_dropped`.
_DROPPED_OMNI = {"answer_audios": "answer_codes", "ref_audios": "ref_audios",
                 "spk_emb": "spk_emb"}


def split_long_text(text: str, max_chars: int) -> list[str]:
    """Cut text into pieces of at most max_chars, at line breaks where possible (no text lost)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # a single overlong line is cut hard
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:max_chars])
            line = line[max_chars:]
        if len(current) + len(line) > max_chars:
            pieces.append(current)
            current = ""
        current += line
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _dialogue_text(messages: list[dict[str, Any]]) -> str:
    """What identifies a conversation for dedup and splitting: every turn but the system prompt.

    System prompts are boilerplate shared by a whole dataset; left in, they dominate the
    shingles and make different conversations look like near-duplicates.
    """
    parts = []
    for m in messages:
        if m["role"] == "system":
            continue
        extra = " ".join(m.get(k, "") for k in ("reasoning_content", "tool_calls") if m.get(k))
        parts.append(f"{m['role']}: {m['content']} {extra}".rstrip())
    return "\n".join(parts)


def _size(messages: list[dict[str, Any]]) -> int:
    return sum(len(m["content"]) + sum(len(m.get(k, "")) for k in ("reasoning_content", "tools",
                                                                   "tool_calls"))
               for m in messages)


def _spoken_text(messages: list[dict[str, Any]]) -> str:
    """The natural-language part of a conversation (no media markers), for language detection."""
    return " ".join(m["content"].replace(IMAGE_MARKER, " ").replace(AUDIO_MARKER, " ")
                    for m in messages
                    if m["role"] in ("user", "assistant"))


class RejectSink:
    """The rejects file: one JSON line per dropped record, with enough to inspect and recover it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, detail: str, source: str, origin: str, record: Any,
            duplicate_of: str | None = None) -> None:
        self.counts[reason] += 1
        entry = {"reason": reason, "detail": detail, "source": source, "origin": origin,
                 "record": record}
        if duplicate_of is not None:
            entry["duplicate_of"] = duplicate_of
        self._handle.write(json.dumps(entry, ensure_ascii=False, default=_jsonable) + "\n")

    def close(self) -> None:
        self._handle.close()


def _filled(value: Any) -> bool:
    """Whether a media field holds something: not null, not an empty list or bytes."""
    if isinstance(value, list):  # a list of codes, or of one code list per turn
        return any(_filled(item) if isinstance(item, list) else item is not None
                   for item in value)
    return value is not None and value != b""


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):  # media: described, never dumped
        return describe_audio(bytes(value)) or describe_bytes(bytes(value))
    return repr(value)


class Cleaner:
    """Cleans raw files into per-kind, per-split shard writers under one output directory."""

    def __init__(self, config: CleanConfig, out_dir: Path, progress: bool = True) -> None:
        self.config = config
        self.out_dir = out_dir
        self.progress = progress
        self.rejects = RejectSink(out_dir / "rejects.jsonl")
        self._writers: dict[tuple[str, str], ShardWriter] = {}
        self._dedup: dict[str, Deduplicator] = {}
        self._stores: dict[str, UniqueRowStore] = {}
        self.stats: dict[str, Counter[str]] = defaultdict(Counter)

    # -- one file --------------------------------------------------------------------------
    def clean_file(self, path: Path, display: str, source: str, kind: str) -> None:
        """Clean every record of one raw file; `display` is the name used in origins."""
        if kind not in CLEANABLE_KINDS:
            raise ValueError(f"{display}: cleaning {kind!r} records is not supported yet "
                             f"(supported: {', '.join(CLEANABLE_KINDS)})")
        stats = self.stats[source]
        for item in tqdm(iter_records(path), desc=f"clean {display}", unit="rec",
                         disable=not self.progress, leave=False):
            origin = f"{display}:{item.line}"
            stats["records_in"] += 1
            if isinstance(item, ReadIssue):
                self.rejects.add(item.reason, item.detail, source, origin, item.raw)
                continue
            try:
                docs = self._documents(kind, item.value, origin, path.parent)
            except SchemaError as exc:
                if isinstance(exc, ImageError):
                    stats["images.rejected"] += 1
                elif isinstance(exc, AudioError):
                    stats["audio.rejected"] += 1
                self.rejects.add(exc.reason, exc.detail, source, origin, item.value)
                continue
            kept = 0
            for doc in docs:
                kept += self._keep(kind, source, doc)
            stats["records_kept"] += kept > 0
            stats["docs_out"] += kept

    def _documents(self, kind: str, value: dict[str, Any], origin: str, base_dir: Path
                   ) -> list[Doc]:
        """The output rows of one raw record; `base_dir` resolves relative image paths."""
        form = self.config.unicode_form
        record = validate_record(kind, value)
        notes: dict[str, int] = {}
        if kind == "omni":  # MiniMind-O's layout (one clip per user turn) -> <audio> markers
            record, notes["omni.turns_matched"] = match_turn_audios(record)
            notes["omni.records_matched"] = int(notes["omni.turns_matched"] > 0)
            for key, name in _DROPPED_OMNI.items():
                notes[f"omni.{name}_dropped"] = int(_filled(record.get(key)))
        # Validate again after normalisation: it may empty a field (e.g. only zero-width chars).
        record = validate_record(kind, normalize_record(kind, record, form))
        if kind == "pretrain":
            pieces = split_long_text(record["text"], self.config.max_chars)
            return [Doc({"text": p}, p, detect_lang(p),
                        origin if len(pieces) == 1 else f"{origin}#{i}")
                    for i, p in enumerate(pieces)]
        if kind != "dpo":
            turns = [record["conversations"]]
            text = _dialogue_text(record["conversations"])
            columns = {"conversations": json.dumps(record["conversations"], ensure_ascii=False)}
        else:
            turns = [record["chosen"], record["rejected"][-1:]]
            text = _dialogue_text(record["chosen"]) + "\n" + _dialogue_text(record["rejected"][-1:])
            columns = {key: json.dumps(record[key], ensure_ascii=False)
                       for key in ("chosen", "rejected")}
        size = sum(_size(messages) for messages in turns)
        if size > self.config.max_conversation_chars:
            raise SchemaError("too_long", f"{size} chars > max_conversation_chars "
                                          f"{self.config.max_conversation_chars}")
        images: tuple[CleanImage, ...] = ()
        audios: tuple[CleanAudio, ...] = ()
        if kind in MEDIA_KINDS:
            images = self._checked_images(record, base_dir, required=kind == "vlm")
            columns["images"] = [image.sha256 for image in images]
            text += "\n" + " ".join(columns["images"])
            for field in ANSWER_FIELDS:  # checked by validate_record; kept for evaluation
                columns[field] = (json.dumps(record[field], ensure_ascii=False)
                                  if field in record else None)
        if kind == "omni":
            questions, answer = self._checked_audio(record, base_dir)
            audios = questions + (() if answer is None else (answer,))
            columns["question_audios"] = [clip.sha256 for clip in questions]
            columns["answer_audio"] = None if answer is None else answer.sha256
            columns["question_text"] = record.get("question_text")
            text += "\n" + " ".join(clip.sha256 for clip in audios)
        lang_text = _spoken_text(turns[0])
        return [Doc(columns, text, detect_lang(lang_text), origin, images, audios,
                    tuple(notes.items()))]

    def _checked_images(self, record: dict[str, Any], base_dir: Path, required: bool
                        ) -> tuple[CleanImage, ...]:
        """The record's images, checked and normalised, after its markers were matched."""
        refs = image_refs(record)
        if not refs and required:
            raise SchemaError("no_image", "a vlm record needs an image (image_bytes or image); "
                                          "text-only conversations belong in an sft source")
        check_image_markers(record["conversations"], len(refs))
        config = self.config.images
        images = []
        for i, ref in enumerate(refs, 1):
            try:
                images.append(normalize_image(read_image_ref(ref, base_dir, config), config))
            except ImageError as exc:
                raise ImageError(exc.reason, f"image {i} of {len(refs)}: {exc.detail}") from None
        return tuple(images)

    def _checked_audio(self, record: dict[str, Any], base_dir: Path
                       ) -> tuple[tuple[CleanAudio, ...], CleanAudio | None]:
        """The record's question clips and spoken answer, checked and normalised to 16 kHz."""
        questions, answer = audio_refs(record)
        if not questions and answer is None:
            codes = (" (answer_audios holds MiniMind-O Mimi codes, which nothing here trains on)"
                     if _filled(record.get("answer_audios")) else "")
            raise SchemaError("no_audio", "an omni record needs audio (question_audios or "
                                          f"answer_audio WAV){codes}; image-text records belong "
                                          "in a vlm source")
        check_audio_markers(record["conversations"], len(questions))
        config = self.config.audio

        def clip(ref: bytes | str, where: str) -> CleanAudio:
            try:
                return normalize_audio(read_audio_ref(ref, base_dir, config), config)
            except AudioError as exc:
                raise AudioError(exc.reason, f"{where}: {exc.detail}") from None

        checked = tuple(clip(ref, f"question audio {i} of {len(questions)}")
                        for i, ref in enumerate(questions, 1))
        return checked, None if answer is None else clip(answer, "answer audio")

    def _keep(self, kind: str, source: str, doc: Doc) -> bool:
        """Filter, dedup and write one document; True if it was written."""
        if kind == "pretrain":
            issue = quality_issue(doc.text, doc.lang, self.config.quality)
            if issue is not None:
                self.rejects.add(issue[0], issue[1], source, doc.origin, doc.columns)
                return False
        if kind not in self._dedup:
            dedup_config = self.config.dedup
            if kind in MEDIA_KINDS:  # the text key holds media hashes: only exact matches count
                dedup_config = dedup_config.model_copy(update={"near": False})
            self._dedup[kind] = Deduplicator(dedup_config)
        dedup = self._dedup[kind]
        duplicate = dedup.check(doc.origin, doc.text)
        if duplicate is not None:
            reason, first = duplicate
            self.rejects.add(reason, f"duplicate of {first}", source, doc.origin, doc.columns,
                             duplicate_of=first)
            return False
        split = self._split(" ".join(image.sha256 for image in doc.images) or doc.text, kind)
        self._writer(kind, split).write(
            {**doc.columns, "lang": doc.lang, "source": source, "origin": doc.origin})
        self.stats[source][f"{kind}.{split}"] += 1
        self.stats[source][f"lang.{doc.lang}"] += 1
        for name, items in ((IMAGES_DIR, doc.images), (AUDIO_DIR, doc.audios)):
            for item in items:
                stored = self._store(name).add(item)
                self.stats[source][f"{name}.stored" if stored else f"{name}.duplicates"] += 1
        for name, count in doc.notes:
            if count:
                self.stats[source][name] += count
        return True

    def _store(self, name: str) -> Any:
        """The images/ or audio/ store, opened on first use."""
        if name not in self._stores:
            if name == IMAGES_DIR:
                store: UniqueRowStore = ImageStore(self.out_dir / name,
                                                   self.config.images.shard_rows)
            else:
                store = AudioStore(self.out_dir / name, self.config.audio.shard_rows)
            self._stores[name] = store
        return self._stores[name]

    def _split(self, text: str, kind: str) -> str:
        """Deterministic by content: the same text always lands in the same split."""
        bucket = xxhash.xxh64_intdigest(text.encode(), seed=self.config.seed % 2**64) / 2**64
        fraction = self.config.val_fraction_by_kind.get(kind, self.config.val_fraction)
        return "val" if bucket < fraction else "train"

    def _writer(self, kind: str, split: str) -> ShardWriter:
        key = (kind, split)
        if key not in self._writers:
            self._writers[key] = ShardWriter(self.out_dir / kind, split, SCHEMAS[kind],
                                             self.config.shard_rows)
        return self._writers[key]

    # -- the whole corpus ------------------------------------------------------------------
    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        for store in self._stores.values():
            store.close()
        # The multimodal stages depend on these folders, so they must exist even with no
        # vlm/omni source. DVC keeps no empty folder in its cache (a run-cache restore or a
        # checkout would drop it and the next stage would fail on a missing dependency), so an
        # unfilled one holds a marker file that no shard reader matches.
        for folder in (IMAGES_DIR, AUDIO_DIR, *MEDIA_KINDS):
            path = self.out_dir / folder
            path.mkdir(parents=True, exist_ok=True)
            if not any(path.iterdir()):
                (path / EMPTY_MARKER).write_text("no record of this kind or media; the folder "
                                                 "exists for the stages that depend on it\n")
        self.rejects.close()

    def report(self, seconds: float) -> dict[str, Any]:
        """Counts per rule, per source, per kind/split and per language, plus throughput."""
        total: Counter[str] = Counter()
        for counts in self.stats.values():
            total.update(counts)
        rows = {f"{kind}.{split}": w.rows_written for (kind, split), w in self._writers.items()}
        return {
            "records_in": total["records_in"],
            "records_kept": total["records_kept"],
            "records_rejected": total["records_in"] - total["records_kept"],
            "docs_out": total["docs_out"],
            "rejects_by_reason": dict(sorted(self.rejects.counts.items())),
            "rows": dict(sorted(rows.items())),
            "by_source": {s: dict(sorted(c.items())) for s, c in sorted(self.stats.items())},
            "dedup": {kind: d.stats for kind, d in sorted(self._dedup.items())},
            **{media: {name: total[f"{media}.{name}"]
                       for name in ("stored", "duplicates", "rejected")}
               for media in (IMAGES_DIR, AUDIO_DIR)},
            "seconds": round(seconds, 3),
            "records_per_s": round(total["records_in"] / max(seconds, 1e-9), 1),
        }


def clean_corpus(sources: list[dict[str, Any]], raw_dir: Path, out_dir: Path,
                 config: CleanConfig, progress: bool = True) -> dict[str, Any]:
    """Clean every file of every manifest source into out_dir; return the report."""
    started = time.perf_counter()
    cleaner = Cleaner(config, out_dir, progress)
    try:
        for source in sources:
            for entry in source["files"]:
                cleaner.clean_file(raw_dir / entry["path"], entry["path"], source["name"],
                                   source["kind"])
    finally:
        cleaner.close()
    return cleaner.report(time.perf_counter() - started)
