"""The offline upstream world (tests/upstream_world.py) is what it claims: upstream's file names
and schemas, records the clean stage keeps, weights our model loads strictly, an upstream-style
tokenizer, tiny encoders, and a loopback Hub that huggingface_hub / transformers download from,
in this process and in a subprocess that only has HF_ENDPOINT."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests import upstream_world as uw
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> uw.World:
    return uw.build_world(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def hub(world: uw.World):
    with uw.serve_hub(world.repos) as served:
        yield served


@pytest.fixture
def on_hub(hub: uw.FakeHub, monkeypatch, tmp_path) -> uw.FakeHub:
    """The hub, with huggingface_hub/transformers in this process pointed at it."""
    hub.patch(monkeypatch, tmp_path / "hf_home")
    hub.requests.clear()
    return hub


def files_of(world: uw.World, repo: str) -> dict[str, bytes]:
    return world.files(repo)


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def rows(data: bytes) -> list[dict]:
    return pq.read_table(io.BytesIO(data)).to_pylist()


def dialogue_text(messages: list[dict]) -> str:
    """What clean dedups a conversation on: every turn but the system prompt."""
    return "\n".join(" ".join([m["content"], m.get("reasoning_content", ""),
                               m.get("tool_calls", "")]) for m in messages if m["role"] != "system")


# ---------------------------------------------------------------------------------- text data

def test_text_files_have_upstream_names_and_schemas(world) -> None:
    files = files_of(world, uw.TEXT_REPO)
    assert set(files) == set(uw.TEXT_FILES)
    pretrain, sft, dpo = (jsonl(files[name]) for name in uw.TEXT_FILES)
    assert len(pretrain) == 300 and len(sft) == 300 and len(dpo) == 200
    assert all(set(r) == {"text"} for r in pretrain)
    assert all(set(r) == {"conversations"} for r in sft)
    assert all(set(r) == {"chosen", "rejected"} for r in dpo)
    messages = [m for r in sft for m in r["conversations"]]
    assert {m["role"] for m in messages} == {"system", "user", "assistant", "tool"}
    assert sum("reasoning_content" in m for m in messages) > 20
    tools = [m for m in messages if "tools" in m]
    calls = [m for m in messages if "tool_calls" in m]
    assert tools and calls and all(m["role"] == "system" for m in tools)
    assert all(isinstance(m["tools"], str) and json.loads(m["tools"])[0]["type"] == "function"
               for m in tools)  # JSON strings, as upstream stores them
    assert all(json.loads(m["tool_calls"])[0]["arguments"] for m in calls)
    texts = [r["text"] for r in pretrain]
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts) == 150  # zh / en
    for pair in dpo:
        assert pair["chosen"][:-1] == pair["rejected"][:-1]
        assert pair["chosen"][-1]["content"] != pair["rejected"][-1]["content"]


def test_text_records_pass_the_clean_stage_checks_and_are_all_distinct(world) -> None:
    from minimind.data.dedup import DedupConfig, Deduplicator
    from minimind.data.quality import QualityConfig, quality_issue
    from minimind.data.records import validate_record
    from minimind.data.textnorm import detect_lang

    files = files_of(world, uw.TEXT_REPO)
    pretrain, sft, dpo = (jsonl(files[name]) for name in uw.TEXT_FILES)
    quality = QualityConfig()
    issues = [quality_issue(r["text"], detect_lang(r["text"]), quality) for r in pretrain]
    assert issues == [None] * 300
    keys = {
        "pretrain": [r["text"] for r in pretrain],
        "sft": [dialogue_text(r["conversations"]) for r in sft],
        "dpo": [dialogue_text(r["chosen"]) + "\n" + dialogue_text(r["rejected"][-1:]) for r in dpo],
    }
    for kind, records in (("pretrain", pretrain), ("sft", sft), ("dpo", dpo)):
        for record in records:
            validate_record(kind, record)
        dedup = Deduplicator(DedupConfig())  # clean's defaults: exact + MinHash at 0.7
        duplicates = [dedup.check(str(i), text) for i, text in enumerate(keys[kind])]
        assert [d for d in duplicates if d] == [], kind


# ------------------------------------------------------------------------------ vision / omni

def image_markers(conversation: list[dict]) -> int:
    return sum(m["content"].count("<image>") for m in conversation if m["role"] == "user")


def test_vision_files_match_minimind_v(world) -> None:
    from minimind.data.records import check_image_markers, image_refs, validate_record

    files = files_of(world, uw.VISION_REPO)
    assert set(files) == set(uw.VISION_FILES)
    schemas = {name: pq.read_schema(io.BytesIO(data)) for name, data in files.items()}
    assert str(schemas["pretrain_i2t.parquet"].field("image_bytes").type) == "binary"
    assert str(schemas["sft_i2t.parquet"].field("image_bytes").type) == "list<element: binary>"
    formats, counts = set(), []
    for data in files.values():
        for row in rows(data):
            conversation = json.loads(row["conversations"])  # a JSON string, as upstream
            images = row["image_bytes"]
            images = images if isinstance(images, list) else [images]
            assert image_markers(conversation) == len(images)
            counts.append(len(images))
            for raw in images:
                with Image.open(io.BytesIO(raw)) as image:
                    assert image.size == (64, 64)
                    formats.add(image.format)
            record = validate_record("vlm", {**row, "conversations": conversation})
            check_image_markers(record["conversations"], len(image_refs(record)))
    assert formats == {"PNG", "JPEG"} and 2 in counts and counts.count(1) > 200


def wav_info(data: bytes) -> tuple[int, int, int, float]:
    with wave.open(io.BytesIO(data)) as clip:
        return (clip.getframerate(), clip.getnchannels(), clip.getsampwidth(),
                clip.getnframes() / clip.getframerate())


def test_omni_files_match_minimind_o(world) -> None:
    from minimind.data.records import match_turn_audios, validate_record

    files = files_of(world, uw.OMNI_REPO)
    assert set(files) == set(uw.OMNI_FILES)
    for name in ("sft_t2a_mini.parquet", "sft_a2a_mini.parquet"):
        schema = pq.read_schema(io.BytesIO(files[name]))
        assert schema.names == ["conversations", "question_audios", "answer_audios", "ref_audios",
                                "spk_emb"]
        for row in rows(files[name]):
            conversation = json.loads(row["conversations"])
            users = [m for m in conversation if m["role"] == "user"]
            assistants = [m for m in conversation if m["role"] == "assistant"]
            assert not any("<audio>" in m["content"] for m in conversation)  # none, per upstream
            assert len(row["answer_audios"]) == len(assistants)
            assert all(len(codes) % 8 == 0 and min(codes) >= 0 and max(codes) < 2048
                       for codes in [*row["answer_audios"], row["ref_audios"]])
            assert len(row["spk_emb"]) == 192
            assert abs(float(np.linalg.norm(row["spk_emb"])) - 1) < 1e-3
            if name == "sft_t2a_mini.parquet":
                assert row["question_audios"] == []  # text in, speech out
                continue
            assert len(row["question_audios"]) == len(users)  # one clip per user turn
            for clip in row["question_audios"]:
                rate, channels, width, seconds = wav_info(clip)
                assert (rate, channels, width) == (16000, 1, 2) and 0.5 <= seconds <= 2.0
            record = validate_record("omni", {**row, "conversations": conversation})
            _, turns = match_turn_audios(record)
            assert turns == len(users)
    i2t = rows(files["sft_i2t.parquet"])
    assert all(isinstance(r["image_bytes"], bytes) for r in i2t)
    assert all(image_markers(json.loads(r["conversations"])) == 1 for r in i2t)


def test_speech_like_clips_differ_by_text_and_have_syllables() -> None:
    a, b = uw.speech_like("What is seven plus five?"), uw.speech_like("Where is the old bridge?")
    assert a.dtype == np.float32 and not np.array_equal(a[:8000], b[:8000])
    np.testing.assert_array_equal(a, uw.speech_like("What is seven plus five?"))
    frames = np.abs(a[: len(a) // 160 * 160]).reshape(-1, 160).mean(1)  # 10 ms energy
    loud = frames > 0.5 * frames.max()
    assert 3 <= int(np.sum(loud[1:] & ~loud[:-1])) <= 30  # several syllable onsets


# ------------------------------------------------------------------------------------ weights

@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_upstream_pth_loads_strictly_into_our_model(preset) -> None:
    from minimind.model.config import PRESETS, preset_config
    from minimind.model.modeling import MiniMindForCausalLM

    sizes = PRESETS[preset]
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "intermediate_size", "use_moe", "num_experts", "moe_intermediate_size")
    state = uw.upstream_state_dict(vocab_size=1000, **{k: sizes[k] for k in names if k in sizes})
    loaded = torch.load(io.BytesIO(uw.pth_bytes(state)), map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float16 for t in loaded.values())
    assert not any(k.startswith(("module.", "_orig_mod.")) or "freqs" in k for k in loaded)
    model = MiniMindForCausalLM(preset_config(preset, vocab_size=1000))
    result = model.load_state_dict({k: v.float() for k, v in loaded.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(loaded) == set(model.state_dict())
    torch.testing.assert_close(model.lm_head.weight, loaded["model.embed_tokens.weight"].float())
    torch.testing.assert_close(model.model.layers[0].self_attn.q_norm.weight,
                               loaded["model.layers.0.self_attn.q_norm.weight"].float())
    with torch.no_grad():
        logits = model(torch.tensor([[1, 50, 60, 2]])).logits
    assert logits.shape == (1, 4, 1000) and torch.isfinite(logits).all()
    assert uw.upstream_pth_name("full_sft", 768, use_moe=True) == "full_sft_768_moe.pth"


# ---------------------------------------------------------------------------------- tokenizer

EXPECTED_CHAT = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist "
    "with the user query.\n\nYou are provided with function signatures within <tools></tools> "
    "XML tags:\n<tools>\n{\"name\": \"get_weather\"}\n</tools>\n\nFor each function call, return "
    "a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
    "<|im_end|>\n<|im_start|>user\n北港明天天气如何？<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nlook it up\n</think>\n\n<tool_call>\n"
    "{\"name\": \"get_weather\", \"arguments\": {\"town\": \"北港\"}}\n</tool_call><|im_end|>\n"
    "<|im_start|>user\n<tool_response>\n{\"sky\": \"晴\"}\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n北港明天是晴天。<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def test_tokenizer_folder_is_upstream_style(world) -> None:
    from transformers import AutoTokenizer

    folder = world.dirs["tokenizer"]
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == world.vocab_size == 1000
    assert tokenizer.convert_ids_to_tokens(list(range(36))) == list(uw.SPECIAL_TOKENS)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert [t["special"] for t in spec["added_tokens"]] == [True] * 21 + [False] * 15
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["model"]["type"] == "BPE"
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|audio_pad|>"]) == [12, 16]
    text = "从北港到西田的火车 takes about three hours, 你好!"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "北港明天天气如何？"},
                {"role": "assistant", "content": "", "reasoning_content": "look it up",
                 "tool_calls": [{"name": "get_weather", "arguments": {"town": "北港"}}]},
                {"role": "tool", "content": "{\"sky\": \"晴\"}"},
                {"role": "assistant", "content": "北港明天是晴天。"}]
    rendered = tokenizer.apply_chat_template(messages, tools=[{"name": "get_weather"}],
                                             tokenize=False, add_generation_prompt=True)
    assert rendered == EXPECTED_CHAT


# ----------------------------------------------------------------------------------- encoders

def test_tiny_encoders_load_from_local_dirs(world, tmp_path) -> None:
    from minimind.encoders import load_audio_encoder, load_vision_encoder

    vision = load_vision_encoder(str(world.dirs["vision_encoder"]))
    assert (vision.num_tokens, vision.feature_dim, vision.image_size) == (4, 32, 64)
    images = [Image.open(io.BytesIO(rows(files_of(world, uw.VISION_REPO)["pretrain_i2t.parquet"])[i]
                                    ["image_bytes"])) for i in range(2)]
    features = vision.encode(images)
    assert features.shape == (2, 4, 32) and (features[0] - features[1]).abs().mean() > 1e-4
    audio = load_audio_encoder(str(world.dirs["audio_encoder"]))
    assert (audio.feature_dim, audio.tokens_per_second) == (32, 50)
    clip = uw.speech_like("How long is the train ride from Ashford to Oakdale?")
    (tokens,) = audio.encode([clip])
    assert tokens.shape == (audio.num_tokens(len(clip)), 32) and torch.isfinite(tokens).all()
    siglip2 = load_vision_encoder(str(uw.save_tiny_siglip2(tmp_path / "siglip2")))
    assert (siglip2.num_tokens, siglip2.feature_dim) == (16, 32)


# -------------------------------------------------------------------------------------- hub

def test_hub_serves_files_like_the_hub(on_hub, world, tmp_path) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from minimind.data.fetch import fetch_hf

    api = HfApi()
    commit = on_hub.commit("dataset", uw.TEXT_REPO)
    assert api.dataset_info(uw.TEXT_REPO).sha == commit
    assert sorted(s.rfilename for s in api.model_info(world.audio_encoder_repo).siblings) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    tree = {f.path: f for f in api.list_repo_tree(uw.OMNI_REPO, repo_type="dataset")}
    assert set(tree) == set(uw.OMNI_FILES) and all(f.lfs for f in tree.values())
    (info,) = api.get_paths_info(uw.TEXT_REPO, ["dpo.jsonl"], repo_type="dataset")
    assert info.size == len(files_of(world, uw.TEXT_REPO)["dpo.jsonl"]) and info.lfs is None
    # A regular file straight from the hub; an LFS file through a redirect to the "CDN".
    dpo = hf_hub_download(uw.TEXT_REPO, "dpo.jsonl", repo_type="dataset")
    assert Path(dpo).read_bytes() == files_of(world, uw.TEXT_REPO)["dpo.jsonl"]
    pinned = hf_hub_download(uw.OMNI_REPO, "sft_a2a_mini.parquet", repo_type="dataset",
                             revision=on_hub.commit("dataset", uw.OMNI_REPO))
    assert Path(pinned).read_bytes() == files_of(world, uw.OMNI_REPO)["sft_a2a_mini.parquet"]
    resolves = on_hub.hits(f"/datasets/{uw.OMNI_REPO}/resolve/")
    assert [r.status for r in resolves] == [302]
    assert len([r for r in on_hub.requests if r.server == "cdn"]) == 1
    # The download stage's own fetcher (local_dir mode).
    fetched = fetch_hf(world.dataset_uri(uw.VISION_REPO, "sft_i2t.parquet"),
                       tmp_path / "sft_i2t.parquet", cache_dir=tmp_path / "cache")
    assert fetched.bytes == len(files_of(world, uw.VISION_REPO)["sft_i2t.parquet"])
    weights = fetch_hf(world.weights_uri(), tmp_path / world.pth_name,
                       cache_dir=tmp_path / "cache", repo_type="model")  # as init_from does
    assert weights.bytes == len(files_of(world, world.weights_repo)[world.pth_name])
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(uw.TEXT_REPO, "nope.jsonl", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(uw.TEXT_REPO, "dpo.jsonl", repo_type="dataset", revision="v9")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "x.json")


def test_hub_headers_and_ranges(hub, world) -> None:
    """The headers huggingface_hub reads on HEAD, and Range (how it resumes a download)."""
    import urllib.request

    def fetch(url: str, method: str = "GET", **headers: str):
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            return opener.open(urllib.request.Request(url, method=method, headers=headers))
        except urllib.error.HTTPError as error:  # 3xx/4xx answers, headers and all
            return error

    data = files_of(world, uw.TEXT_REPO)["sft_t2t_mini.jsonl"]
    url = f"{hub.url}/datasets/{uw.TEXT_REPO}/resolve/main/sft_t2t_mini.jsonl"
    head = fetch(url, "HEAD")
    assert head.status == 200 and head.headers["ETag"] == f'"{uw.git_blob_sha1(data)}"'
    assert head.headers["X-Repo-Commit"] == hub.commit("dataset", uw.TEXT_REPO)
    assert int(head.headers["Content-Length"]) == len(data)
    part = fetch(url, Range="bytes=100-")
    assert part.status == 206 and part.read() == data[100:]
    weights = files_of(world, world.weights_repo)[world.pth_name]
    lfs = fetch(f"{hub.url}/{world.weights_repo}/resolve/main/{world.pth_name}", "HEAD")
    assert lfs.status == 302 and int(lfs.headers["X-Linked-Size"]) == len(weights)
    assert lfs.headers["Location"].startswith(hub.cdn_url)
    assert lfs.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(weights).hexdigest()
    assert fetch(lfs.headers["Location"], Range="bytes=10-19").read() == weights[10:20]
    missing = fetch(f"{hub.url}/{world.weights_repo}/resolve/main/none.pth", "HEAD")
    assert missing.status == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"


def test_encoders_and_tokenizer_load_by_hub_id(on_hub, world) -> None:
    from transformers import AutoTokenizer

    from minimind.encoders import load_audio_encoder, load_vision_encoder

    vision = load_vision_encoder(world.vision_encoder_repo)
    assert (vision.num_tokens, vision.feature_dim) == (4, 32)
    assert vision.encode([Image.new("RGB", (64, 64), "red")]).shape == (1, 4, 32)
    audio = load_audio_encoder(world.audio_encoder_repo)
    assert audio.encode([uw.speech_like("Where is the bakery?")])[0].shape[1] == 32
    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer_repo)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 2 and tokenizer.chat_template
    # Every miss is a file transformers probes for and may lack (EntryNotFound), never a route.
    probed = {r.path.rsplit("/", 1)[-1].split("?")[0] for r in on_hub.misses()}
    assert probed <= {"processor_config.json", "config.json", "additional_chat_templates",
                      "tokenizer.model", "added_tokens.json", "special_tokens_map.json",
                      "chat_template.jinja", "chat_template.json"}, on_hub.misses()


def test_a_subprocess_downloads_through_hf_endpoint_alone(hub, world, tmp_path) -> None:
    """What a `dvc repro` stage sees: only the environment points it at the hub."""
    script = f"""
import json, sys
from huggingface_hub import hf_hub_download
from minimind.encoders import load_vision_encoder
path = hf_hub_download({uw.TEXT_REPO!r}, "pretrain_t2t_mini.jsonl", repo_type="dataset")
encoder = load_vision_encoder({world.vision_encoder_repo!r})
print(json.dumps({{"lines": sum(1 for _ in open(path, encoding="utf-8")),
                  "tokens": encoder.num_tokens}}))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **hub.env(tmp_path / "hf_home")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"lines": 300, "tokens": 4}
