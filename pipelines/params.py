"""The params.yaml schema: every knob, validated before any stage does any work.

A typo'd key, a wrong type or an impossible value stops the stage at once with a message that
names the key (`clean.val_fraction: 1.5 must be < 1`), instead of surfacing as a crash an hour
into training. Component configs (quality filters, dedup) are defined next to the code that
uses them in `minimind/` and embedded here, so each field is declared exactly once.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from minimind.data.cleaning import CleanConfig
from minimind.data.dpo_tokens import DPOTokensConfig
from minimind.data.features import AudioFeaturesConfig, VisionFeaturesConfig
from minimind.data.pretrain_tokens import PretrainTokensConfig
from minimind.data.sft_tokens import SFTTokensConfig
from minimind.dpo import DPOConfig
from minimind.export import ExportParams
from minimind.generation import SamplingConfig
from minimind.lora import LoRAConfig
from minimind.model.config import ModelParams
from minimind.tokenizer import TokenizerConfig
from minimind.training.trainer import TrainConfig
from pipelines.training import TrainingStageParams

Kind = Literal["pretrain", "sft", "dpo", "vlm", "omni"]
URI_SCHEMES = ("hf://", "https://", "http://", "file://", "builtin:")


class Strict(BaseModel):
    """Base for every params section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Source(Strict):
    """One input dataset: where it comes from and what kind of records it holds."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="data/raw/<name>/")
    uri: str = Field(description="hf://<repo>/<path>[@rev], https://…, file://…, builtin:<name>")
    kind: Kind
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    limit: int | None = Field(default=None, ge=1, description="builtin: max records to build")
    repo_type: Literal["dataset", "model", "space"] = "dataset"

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if not uri.startswith(URI_SCHEMES):
            raise ValueError(f"{uri!r} must start with one of {', '.join(URI_SCHEMES)}")
        if uri.startswith("hf://") and len(uri[5:].split("@")[0].split("/")) < 3:
            raise ValueError(f"{uri!r} must look like hf://<owner>/<repo>/<path>[@rev]")
        return uri

    @model_validator(mode="after")
    def _builtin_exists(self) -> Source:
        if self.uri.startswith("builtin:"):
            from minimind.data.builtin import BUILTIN_SOURCES

            name = self.uri.removeprefix("builtin:")
            if name not in BUILTIN_SOURCES:
                raise ValueError(f"unknown builtin {name!r}; known: {', '.join(BUILTIN_SOURCES)}")
            if BUILTIN_SOURCES[name].kind != self.kind:
                raise ValueError(f"builtin:{name} holds {BUILTIN_SOURCES[name].kind!r} records, "
                                 f"not {self.kind!r}")
        elif self.limit is not None:
            raise ValueError("limit applies to builtin: sources only")
        return self


class DataParams(Strict):
    sources: list[Source] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Source]) -> list[Source]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return sources


class DownloadParams(Strict):
    retries: int = Field(default=5, ge=0, description="extra attempts per file after a failure")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles each time")
    timeout_s: float = Field(default=60.0, gt=0, description="per-request connect/read timeout")
    seed: int = Field(default=42, description="seed for builtin corpus sampling")


class TokenizerParams(TokenizerConfig):
    """tokenizer: the BPE knobs of minimind.tokenizer plus what text it learns from.

    `pretrained` set: no training; an existing tokenizer is loaded, checked and saved, and
    vocab_size, min_frequency, max_train_chars and include_sft are ignored (the model's
    vocabulary is then len(tokenizer), as always).
    """

    max_train_chars: int = Field(default=200_000_000, ge=1000, description="training text cap")
    include_sft: bool = Field(default=True, description="also learn from SFT dialogue text")
    pretrained: str | None = Field(
        default=None, description="use this tokenizer instead of training one: a hub id "
        "<owner>/<repo>[@rev] (or hf://…; $HF_ENDPOINT mirrors work) or a folder holding "
        "tokenizer.json (absolute, relative to the project, or file://…), e.g. upstream "
        "MiniMind's model/. Checked at stage start for the tokens and chat layout the "
        "pipeline needs")

    @field_validator("pretrained")
    @classmethod
    def _pretrained_form(cls, spec: str | None) -> str | None:
        from minimind.tokenizer import check_pretrained_spec

        return None if spec is None else check_pretrained_spec(spec)


class TokenizeParams(Strict):
    """tokenize: how clean text becomes training tokens."""

    pretrain: PretrainTokensConfig = PretrainTokensConfig()
    sft: SFTTokensConfig = SFTTokensConfig()
    dpo: DPOTokensConfig = DPOTokensConfig()


class FeaturesParams(Strict):
    """features: the frozen encoders run once over the clean multimodal inputs."""

    vision: VisionFeaturesConfig = VisionFeaturesConfig()
    audio: AudioFeaturesConfig = AudioFeaturesConfig()


def _weights_uri(uri: str | None) -> str | None:
    from minimind.model.upstream import check_weights_uri

    return None if uri is None else check_weights_uri(uri)


WeightsURI = Annotated[str | None, AfterValidator(_weights_uri)]  # pretrain/sft.init_from


class PretrainParams(TrainingStageParams):
    """pretrain: causal-LM training from scratch (or from `init_from`) on the token shards."""

    seq_len: int = Field(ge=16, description="tokens per training row")
    eval_rows: int = Field(default=256, ge=1, description="held-out rows per evaluation")
    init_from: WeightsURI = Field(
        default=None, description="start from these weights instead of random ones: "
        "hf://[models/]<owner>/<repo>/<file>[@rev], https://…, file://… or a path, holding an "
        "upstream MiniMind .pth state dict (e.g. llm_768.pth) or a safetensors file/folder of "
        "this project. The architecture still comes from `model` (and the vocabulary from "
        "the tokenizer); keys are matched strictly, a missing, unexpected or misshapen one is "
        "an error. train.max_steps >= 1 still applies: a few steps continue training")


class SFTParams(TrainingStageParams):
    """sft: chat fine-tuning, optionally with LoRA."""

    seq_len: int = Field(ge=16, description="tokens per packed row")
    eval_rows: int = Field(default=256, ge=1, description="held-out rows per evaluation")
    init_from: WeightsURI = Field(
        default=None, description="fine-tune these weights instead of models/pretrain's (same "
        "forms as pretrain.init_from, e.g. an upstream full_sft_768.pth); the architecture "
        "and tokenizer still come from models/pretrain, and keys are matched strictly")

    lora: LoRAConfig = LoRAConfig()
    sampling: SamplingConfig = SamplingConfig()


class DPOParams(TrainingStageParams, DPOConfig):
    """dpo: preference optimisation of the SFT model against itself as frozen reference."""


class AlignPhase1Params(Strict):
    """align.phase1: the projector alone learns to speak the frozen LLM's embedding language."""

    sources: list[str] = Field(min_length=1, description="vlm source names (data.sources)")
    train: TrainConfig


class AlignPhase2Params(AlignPhase1Params):
    """align.phase2: multimodal SFT of the projector and the chosen parts of the LLM."""

    llm_layers: Literal["all", "none"] | list[Annotated[int, Field(ge=0)]] = Field(
        default="all", description="decoder layers that train: all (+ final norm), none, or "
        "a list of indices")
    train_embeddings: bool = Field(
        default=False, description="also train the token embedding (tied to the output head)")
    projector_lr: float | None = Field(
        default=None, gt=0, description="peak learning rate of the projectors (train.lr for "
        "the LLM); null: train.lr for both")


class AlignParams(Strict):
    """align: projector alignment (LLM frozen), then multimodal SFT (models/vlm)."""

    max_len: int = Field(default=320, ge=16, description="tokens per conversation, pads "
                         "included; a record cut inside an image is dropped")
    eval_rows: int = Field(default=256, ge=1, description="held-out records per evaluation")
    phase1: AlignPhase1Params
    phase2: AlignPhase2Params


class AlignOmniParams(AlignParams):
    """align_omni: audio projector alignment (LLM and vision frozen), then omni SFT
    (models/omni). Sources may be vlm or omni ones."""

    max_len: int = Field(default=384, ge=16, description="tokens per conversation, image and "
                         "audio pads included; a record cut inside either is dropped")


class EvalParams(Strict):
    """eval: how much held-out data each measurement uses."""

    docs_per_group: int = Field(default=32, ge=1, description="held-out docs per source/language")
    max_tokens: int = Field(default=256, ge=2, description="tokens scored per document")
    qa_sources: list[str] = Field(default=[], description="sft sources whose held-out "
                                  "conversations are multiple-choice questions (the last "
                                  "assistant turn is the answer); empty: no QA accuracy")
    questions: int = Field(default=100, ge=2, description="held-out multiple-choice questions")
    choices: int = Field(default=4, ge=2, description="candidates per question (chance = 1/n)")
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0
    sampling: SamplingConfig = SamplingConfig(prompts=4)


class EvalVLMParams(Strict):
    """eval_vlm: held-out VQA accuracy per question type, and caption samples, of models/vlm."""

    sources: list[str] = Field(default=["scene_vqa"], min_length=1,
                               description="vlm sources whose held-out questions are scored")
    max_questions: int = Field(default=600, ge=1, description="held-out questions at most")
    max_new_tokens: int = Field(default=8, ge=1, description="reply tokens per question")
    batch_size: int = Field(default=32, ge=1, description="questions generated together")
    captions: int = Field(default=8, ge=0, description="caption samples (0: none)")
    caption_sources: list[str] = Field(default=["scene_captions"], min_length=1,
                                       description="vlm sources the caption samples come from")
    caption_max_new_tokens: int = Field(default=48, ge=1, description="reply tokens of long "
                                        "answers: caption samples and `open` questions")
    short_answer_words: int = Field(default=3, ge=0, description="an untyped reference of at "
                                    "most this many words is scored by exact match, a longer "
                                    "one by ROUGE-L (minimind.vlm_eval)")


class EvalOmniParams(Strict):
    """eval_omni: held-out ASR error rates and spoken VQA of models/omni, and typed VQA."""

    sources: list[str] = Field(default=["scene_speech"], min_length=1,
                               description="omni sources whose held-out records are scored")
    text_sources: list[str] = Field(default=["scene_vqa"], min_length=1,
                                    description="vlm sources asked as typed questions")
    max_records: int = Field(default=300, ge=1, description="held-out records per source set")
    max_new_tokens: int = Field(default=48, ge=1, description="reply tokens (transcripts, "
                                "spoken questions, `open` typed questions)")
    answer_max_new_tokens: int = Field(default=8, ge=1, description="reply tokens (typed VQA "
                                       "with short answers)")
    batch_size: int = Field(default=16, ge=1, description="prompts generated together")
    samples: int = Field(default=8, ge=0, description="replies per task in omni_samples.json")
    short_answer_words: int = Field(default=3, ge=0, description="an untyped reference of at "
                                    "most this many words is scored by exact match, a longer "
                                    "one by ROUGE-L (minimind.vlm_eval)")


class CodecParams(Strict):
    """talker.codec: the rvq-mel codec (minimind.audio.rvq.RVQConfig) trained on answer speech."""

    num_quantizers: int = Field(default=4, ge=1, description="codes per step (RVQ stages)")
    codebook_size: int = Field(default=512, ge=2, description="entries per codebook")
    stack: int = Field(default=2, ge=1, description="mel frames per code step")
    kmeans_iters: int = Field(default=20, ge=1)
    refine_rounds: int = Field(default=2, ge=0)
    max_train_vectors: int = Field(default=100_000, ge=1)
    seed: int = 0


class TalkerParams(Strict):
    """talker: codec training, Talker training on the omni model's states, intelligibility."""

    sources: list[str] = Field(default=["scene_speech"], min_length=1,
                               description="omni sources whose answer speech is learned")
    codec: CodecParams = CodecParams()
    thinker_layer: int | None = Field(default=None, ge=0, description="hidden_states entry the "
                                      "Talker reads (None: the middle layer)")
    hidden_size: int = Field(default=128, ge=8)
    num_layers: int = Field(default=3, ge=1)
    num_heads: int = Field(default=4, ge=1)
    lookahead: int = Field(default=2, ge=1, description="text states before the first frame")
    rate_quantile: float | None = Field(default=0.1, gt=0, lt=1, description="speaking-rate "
                                        "quantile of the streaming schedule (None: the mean)")
    steps: int = Field(default=400, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    seed: int = 0
    max_frames: int = Field(default=600, ge=1, description="generation cap per answer")
    eval_clips: int = Field(default=24, ge=1, description="held-out answers scored by WER")
    samples: int = Field(default=4, ge=0, description="answers whose WAVs go to MLflow")


class ModalitiesParams(Strict):
    """modalities: which model families the DAG trains beside the text LLM (always trained).

    A family switched off keeps its stages in dvc.yaml, but they do no work: each writes
    placeholder outputs and metrics saying `skipped` (pipelines.stage), so `dvc repro` stays
    the one command and `dvc metrics show` says what did not run. Its params sections are
    then not checked against data.sources either, so a text-only preset need not rewrite
    them.
    """

    vision: bool = Field(default=True, description="features (images), align, eval_vlm, "
                         "export_vlm: the VLM grown from models/sft")
    omni: bool = Field(default=True, description="audio features, align_omni, eval_omni, "
                       "talker: the omni model grown from models/vlm (needs vision)")

    @model_validator(mode="after")
    def _omni_needs_vision(self) -> ModalitiesParams:
        if self.omni and not self.vision:
            raise ValueError("omni: true needs vision: true (the omni model grows from "
                             "models/vlm)")
        return self


class ExportStageParams(ExportParams):
    """export: formats (from minimind.export) plus where the MLflow model is registered."""

    registered_model_name: str = Field(default="minimind-text", min_length=1)


class Params(Strict):
    data: DataParams
    modalities: ModalitiesParams = ModalitiesParams()
    download: DownloadParams = DownloadParams()
    clean: CleanConfig = CleanConfig()
    tokenizer: TokenizerParams = TokenizerParams()
    tokenize: TokenizeParams = TokenizeParams()
    features: FeaturesParams = FeaturesParams()
    model: ModelParams = ModelParams()
    pretrain: PretrainParams
    sft: SFTParams
    dpo: DPOParams
    align: AlignParams
    align_omni: AlignOmniParams
    eval: EvalParams = EvalParams()
    eval_vlm: EvalVLMParams = EvalVLMParams()
    eval_omni: EvalOmniParams = EvalOmniParams()
    talker: TalkerParams = TalkerParams()
    export: ExportStageParams = ExportStageParams()

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        """Cross-section rules: each names the keys involved."""
        if self.sft.seq_len < self.tokenize.sft.max_len:
            raise ValueError(f"sft.seq_len ({self.sft.seq_len}) must be >= tokenize.sft.max_len "
                             f"({self.tokenize.sft.max_len}): packed rows hold whole conversations")
        positions = self.model.to_config().max_position_embeddings
        for section in ("pretrain", "sft"):
            seq_len = getattr(self, section).seq_len
            if seq_len > positions:
                raise ValueError(f"{section}.seq_len ({seq_len}) exceeds the model's "
                                 f"max_position_embeddings ({positions})")
        layers = self.model.to_config().num_hidden_layers
        for section, on in (("align", self.modalities.vision),
                            ("align_omni", self.modalities.omni)):
            max_len = getattr(self, section).max_len
            if on and max_len > positions:
                raise ValueError(f"{section}.max_len ({max_len}) exceeds the model's "
                                 f"max_position_embeddings ({positions})")
            chosen = getattr(self, section).phase2.llm_layers
            if on and isinstance(chosen, list) and (bad := [i for i in chosen if i >= layers]):
                raise ValueError(f"{section}.phase2.llm_layers {bad} out of range: the model "
                                 f"has {layers} decoder layers (0..{layers - 1})")
        kinds = {source.name: source.kind for source in self.data.sources}
        checks: list[tuple[str, list[str], tuple[str, ...]]] = [
            ("eval.qa_sources", self.eval.qa_sources, ("sft",))]
        if self.modalities.vision:
            checks += [("align.phase1.sources", self.align.phase1.sources, ("vlm",)),
                       ("align.phase2.sources", self.align.phase2.sources, ("vlm",)),
                       ("eval_vlm.sources", self.eval_vlm.sources, ("vlm",)),
                       ("eval_vlm.caption_sources", self.eval_vlm.caption_sources, ("vlm",))]
        if self.modalities.omni:
            checks += [("align_omni.phase1.sources", self.align_omni.phase1.sources, ("omni",)),
                       ("align_omni.phase2.sources", self.align_omni.phase2.sources,
                        ("vlm", "omni")),
                       ("eval_omni.sources", self.eval_omni.sources, ("omni",)),
                       ("eval_omni.text_sources", self.eval_omni.text_sources, ("vlm",)),
                       ("talker.sources", self.talker.sources, ("omni",))]
        for key, sources, wanted in checks:
            if bad := [name for name in sources if kinds.get(name) not in wanted]:
                raise ValueError(f"{key}: {bad} are not {' or '.join(wanted)} sources of "
                                 "data.sources (or switch the family off in modalities)")
        return self


class ParamsError(ValueError):
    """Invalid params.yaml; the message lists one `key: problem` line per error."""


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: dict[str, Any]) -> str:
    """Turn one pydantic error into `key: what is wrong` in plain words."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx", {})
    # Validators on a model (not a field) report the model's location; keep their own message.
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = _dotted(loc) or "params.yaml"
    plain = {
        "extra_forbidden": "unknown key",
        "missing": "is required",
        "float_parsing": f"{value!r} is not a number",
        "float_type": f"{value!r} is not a number",
        "int_parsing": f"{value!r} is not an integer",
        "int_type": f"{value!r} is not an integer",
        "int_from_float": f"{value!r} is not an integer",
        "bool_parsing": f"{value!r} is not true/false",
        "bool_type": f"{value!r} is not true/false",
        "string_type": f"{value!r} is not a string",
        "literal_error": f"{value!r} is not one of {ctx.get('expected')}",
        "greater_than": f"{value!r} must be > {ctx.get('gt')}",
        "greater_than_equal": f"{value!r} must be >= {ctx.get('ge')}",
        "less_than": f"{value!r} must be < {ctx.get('lt')}",
        "less_than_equal": f"{value!r} must be <= {ctx.get('le')}",
        "string_pattern_mismatch": f"{value!r} does not match {ctx.get('pattern')}",
        "too_short": "must not be empty",
    }
    if kind in plain:
        return f"{key}: {plain[kind]}"
    message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
    return f"{key}: {message}"


def validate_params(raw: dict[str, Any], origin: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return validate_params(raw or {}, origin=str(path))


def select(params: Params, keys: list[str]) -> dict[str, Any]:
    """The values of dotted params keys (as DVC lists them in dvc.yaml), as plain data."""
    dumped = params.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in keys:
        value: Any = dumped
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def params_hash(values: dict[str, Any]) -> str:
    """Stable hash of a params selection: the identity used for checkpoints and run grouping."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested params to `a.b.c` -> str, the shape MLflow params want."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, list):
            flat.update(flatten({str(i): v for i, v in enumerate(value)}, name))
        else:
            flat[name] = json.dumps(value) if not isinstance(value, str) else value
    return flat
