"""Tests for minimind.export: a MiniMind folder -> stock Qwen3 folder -> GGUF file.

Each model preset ("tiny" dense, "tiny-moe") is built once per module with every parameter
perturbed away from its initial value (so a dropped or swapped tensor changes the numbers), saved
the way the training stages save it, next to a small tokenizer trained on chatterbot-corpus
dialogues. The MoE model's embedding has a few rows more than the tokenizer has tokens, which is
how padded vocabularies look.

The exported Qwen3 folder is read back in a subprocess in which `minimind` cannot be imported,
which proves it needs neither this package nor remote code. The GGUF is read back twice:
by `gguf.GGUFReader` (tensors and metadata) and by transformers' own GGUF loader, an independent
reader whose logits must equal ours.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
import yaml
from gguf import MODEL_ARCH, GGUFReader, GGUFValueType, TokenType, get_tensor_name_map
from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from minimind.export import ExportParams, export_gguf, export_hf
from minimind.export.gguf import inference_chat_template, token_table
from minimind.model import MiniMindForCausalLM, preset_config
from minimind.tokenizer import CONTENT_TOKENS, CONTROL_TOKENS, train_tokenizer

PRESETS = {"tiny": 0, "tiny-moe": 5}  # preset -> embedding rows beyond the tokenizer's tokens
ARCHS = {"tiny": MODEL_ARCH.QWEN3, "tiny-moe": MODEL_ARCH.QWEN3MOE}
DTYPES = ["f32", "f16"]
NEW_TOKENS = 8
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is a computer?"},
    {"role": "assistant", "content": "A machine that computes.", "reasoning_content": "Easy."},
    {"role": "user", "content": "Tell me a joke, 你好 <think>"},
]
SAMPLE_TEXT = "Hello, world! It's 2024 (really) <think>ok</think><|im_end|>\n\n  你好 x  y"

# Run in a fresh interpreter, outside the repository, with `minimind` made unimportable.
READER_SCRIPT = """
import json, sys
sys.modules["minimind"] = None  # any `import minimind...` now raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

jobs = json.loads(open(sys.argv[1]).read())
results = {}
for name, job in jobs.items():
    model = AutoModelForCausalLM.from_pretrained(job["dir"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(job["dir"])
    chat = tokenizer.apply_chat_template(
        job["messages"], tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(chat, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = model(torch.tensor(job["ids"])).logits
        generated = model.generate(**prompt, max_new_tokens=job["new_tokens"], do_sample=False)
    results[name] = {
        "class": type(model).__name__,
        "logits": logits.tolist(),
        "chat": chat,
        "prompt_ids": prompt.input_ids[0].tolist(),
        "generated": generated[0].tolist(),
    }
results["minimind_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "minimind"
                                     and sys.modules[m] is not None)
open(sys.argv[2], "w").write(json.dumps(results))
"""


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def dialogue_lines() -> list[str]:
    lines = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            lines.extend(str(utterance) for utterance in conversation)
    return lines


@dataclass
class Exported:
    model: MiniMindForCausalLM
    model_dir: Path
    hf_dir: Path
    gguf: dict[str, Path]  # dtype -> file


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(dialogue_lines(), vocab_size=600, show_progress=False)


def perturbed_model(preset: str, vocab_size: int, seed: int) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(preset_config(preset, vocab_size=vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def exports(tokenizer, tmp_path_factory) -> dict[str, Exported]:
    out = {}
    for seed, (preset, extra_rows) in enumerate(PRESETS.items()):
        root = tmp_path_factory.mktemp(preset)
        model = perturbed_model(preset, len(tokenizer) + extra_rows, seed)
        model.save_pretrained(root / "trained", safe_serialization=True)
        tokenizer.save_pretrained(root / "trained")
        hf_dir = export_hf(root / "trained", root / "hf")
        gguf = {dtype: export_gguf(hf_dir, root / f"model-{dtype}.gguf", dtype) for dtype in DTYPES}
        out[preset] = Exported(model, root / "trained", hf_dir, gguf)
    return out


def sample_ids(vocab_size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def reloaded(exports, tmp_path_factory) -> dict:
    """What a plain transformers process (no minimind) computes from each exported folder."""
    work = tmp_path_factory.mktemp("reader")
    jobs = {
        preset: {
            "dir": str(e.hf_dir),
            "ids": sample_ids(e.model.config.vocab_size, seed=1).tolist(),
            "messages": CONVERSATION,
            "new_tokens": NEW_TOKENS,
        }
        for preset, e in exports.items()
    }
    (work / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", READER_SCRIPT, "jobs.json", "results.json"],
        cwd=work,
        env=env,
        check=True,
        timeout=300,
    )
    return json.loads((work / "results.json").read_text())


# ---------------------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("preset", PRESETS)
def test_hf_config_maps_every_field(exports, preset):
    e = exports[preset]
    ours = e.model.config
    config = json.loads((e.hf_dir / "config.json").read_text())
    moe = preset == "tiny-moe"
    assert config["model_type"] == ("qwen3_moe" if moe else "qwen3")
    assert config["architectures"] == ["Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM"]
    assert "auto_map" not in config  # nothing for trust_remote_code to fetch
    expected = {
        "vocab_size": ours.vocab_size,
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "intermediate_size": 448,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "dtype": "float32",
        "attention_bias": False,
        "hidden_act": "silu",
    }
    if moe:
        expected |= {
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 224,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
        }
    assert {key: config[key] for key in expected} == expected
    generation = json.loads((e.hf_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 == e.model.config.eos_token_id


@pytest.mark.parametrize("preset", PRESETS)
def test_hf_weights_are_our_tensors_without_the_tied_head(exports, preset):
    e = exports[preset]
    stored = load_file(e.hf_dir / "model.safetensors")
    ours = e.model.state_dict()
    assert set(stored) == set(ours) - {"lm_head.weight"}
    for name, tensor in stored.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, ours[name]), name


def test_hf_tokenizer_files_are_copied_verbatim(exports):
    e = exports["tiny"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (e.hf_dir / name).read_bytes() == (e.model_dir / name).read_bytes()


def test_exported_folder_loads_without_minimind(reloaded, exports):
    assert reloaded["minimind_modules"] == []
    assert reloaded["tiny"]["class"] == "Qwen3ForCausalLM"
    assert reloaded["tiny-moe"]["class"] == "Qwen3MoeForCausalLM"


@pytest.mark.parametrize("preset", PRESETS)
def test_exported_logits_equal_ours(reloaded, exports, preset):
    model = exports[preset].model
    with torch.no_grad():
        ours = model(sample_ids(model.config.vocab_size, seed=1)).logits
    theirs = torch.tensor(reloaded[preset]["logits"])
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_exported_chat_template_and_greedy_generation_equal_ours(
    reloaded, exports, tokenizer, preset
):
    result = reloaded[preset]
    chat = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert result["chat"] == chat
    prompt = tokenizer(chat, add_special_tokens=False, return_tensors="pt")
    assert result["prompt_ids"] == prompt.input_ids[0].tolist()
    with torch.no_grad():
        ours = exports[preset].model.generate(
            **prompt, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=2
        )
    assert result["generated"] == ours[0].tolist()
    assert len(result["generated"]) > prompt.input_ids.shape[1]  # it did generate something


def test_export_hf_replaces_an_old_folder_atomically(exports, tmp_path):
    e = exports["tiny"]
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    assert export_hf(e.model_dir, out) == out
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no staging folder left


def test_failed_export_hf_leaves_the_old_folder_untouched(exports, tmp_path):
    broken = tmp_path / "trained"
    shutil.copytree(exports["tiny"].model_dir, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    out = tmp_path / "hf"
    out.mkdir()
    (out / "previous.txt").write_text("keep me")
    with pytest.raises((OSError, ValueError)):
        export_hf(broken, out)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "trained"]


# ---------------------------------------------------------------------------- GGUF


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def expected_gguf_tensors(hf_dir: Path, arch: MODEL_ARCH) -> dict[str, np.ndarray]:
    """The GGUF tensors, derived independently with gguf's own HF -> llama.cpp name map.

    Per-expert weights `mlp.experts.{j}.X` are stacked along a new first axis, as llama.cpp's
    converter does, and the map names the stack from `mlp.experts.X`.
    """
    weights = load_file(hf_dir / "model.safetensors")
    names = get_tensor_name_map(arch, 4)
    experts: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for hf_name, tensor in weights.items():
        base = hf_name.removesuffix(".weight")
        if match := re.fullmatch(r"(.*\.experts)\.(\d+)\.(\w+)", base):
            stacked = f"{match[1]}.{match[3]}"
            experts.setdefault(names.get_name(stacked), {})[int(match[2])] = tensor.numpy()
        else:
            out[names.get_name(base) + ".weight"] = tensor.numpy()
    for name, by_index in experts.items():
        out[name + ".weight"] = np.stack([by_index[j] for j in sorted(by_index)])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_gguf_tensors_equal_the_checkpoint(exports, preset, dtype):
    e = exports[preset]
    reader = GGUFReader(e.gguf[dtype])
    expected = expected_gguf_tensors(e.hf_dir, ARCHS[preset])
    stored = {t.name: t for t in reader.tensors}
    assert set(stored) == set(expected)
    assert "output.weight" not in stored  # tied head: llama.cpp reuses token_embd
    worst_f16_error = 0.0
    for name, want in expected.items():
        tensor = stored[name]
        assert list(tensor.shape) == list(reversed(want.shape)), name  # ggml ne = (in, out)
        got = np.asarray(tensor.data)
        assert got.shape == want.shape, name
        stays_f32 = dtype == "f32" or want.ndim == 1 or ".ffn_gate_inp." in name
        if stays_f32:
            assert got.dtype == np.float32 and np.array_equal(got, want), name
        else:
            assert got.dtype == np.float16 and np.array_equal(got, want.astype(np.float16)), name
            error = np.abs(got.astype(np.float32) - want).max() / np.abs(want).max()
            worst_f16_error = max(worst_f16_error, float(error))
    assert worst_f16_error <= 2.0**-11  # f16 rounding: half an ulp of a 10-bit mantissa


@pytest.mark.parametrize("preset", PRESETS)
def test_gguf_hyperparameters(exports, preset):
    e = exports[preset]
    for dtype, file_type in (("f32", 0), ("f16", 1)):
        reader = GGUFReader(e.gguf[dtype])
        arch = field(reader, "general.architecture")
        assert arch == ("qwen3moe" if preset == "tiny-moe" else "qwen3")
        expected = {
            "context_length": 4096,
            "embedding_length": 128,
            "block_count": 4,
            "feed_forward_length": 448,
            "attention.head_count": 4,
            "attention.head_count_kv": 2,
            "attention.key_length": 32,
            "attention.value_length": 32,
            "rope.dimension_count": 32,
            "rope.freq_base": 1e6,
        }
        if preset == "tiny-moe":
            expected |= {
                "expert_count": 4,
                "expert_used_count": 2,
                "expert_feed_forward_length": 224,
            }
        assert {key: field(reader, f"{arch}.{key}") for key in expected} == expected
        eps = field(reader, f"{arch}.attention.layer_norm_rms_epsilon")
        assert eps == pytest.approx(1e-6, rel=1e-7)
        assert field(reader, "general.file_type") == file_type


@pytest.mark.parametrize("preset", PRESETS)
def test_gguf_tokenizer_metadata(exports, tokenizer, preset):
    e = exports[preset]
    reader = GGUFReader(e.gguf["f32"])
    vocab_size = e.model.config.vocab_size
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"

    tokens = field(reader, "tokenizer.ggml.tokens")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    padding = [f"[PAD{i}]" for i in range(len(tokenizer), vocab_size)]
    assert tokens == [by_id[i] for i in range(len(tokenizer))] + padding

    types = field(reader, "tokenizer.ggml.token_type")
    assert len(types) == vocab_size
    control = [tokenizer.convert_tokens_to_ids(t) for t in CONTROL_TOKENS]
    user_defined = [tokenizer.convert_tokens_to_ids(t) for t in CONTENT_TOKENS]
    learned = range(len(control) + len(user_defined), len(tokenizer))
    assert sorted(control + user_defined) == list(range(learned.start))  # added tokens come first
    assert [types[i] for i in control] == [TokenType.CONTROL] * len(control)
    assert [types[i] for i in user_defined] == [TokenType.USER_DEFINED] * len(user_defined)
    assert {types[i] for i in learned} == {TokenType.NORMAL}
    assert types[len(tokenizer) :] == [TokenType.UNUSED] * len(padding)

    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(pair) for pair in merges]
    assert len(merges) > 100
    ids = {
        key: field(reader, f"tokenizer.ggml.{key}_token_id")
        for key in ("bos", "eos", "padding", "unknown")
    }
    assert ids == {"bos": 1, "eos": 2, "padding": 0, "unknown": 0}
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert reader.fields["tokenizer.ggml.tokens"].types == [
        GGUFValueType.ARRAY,
        GGUFValueType.STRING,
    ]


def render_like_llama_cpp(template: str, **context) -> str:
    """Render with plain Jinja (no transformers extensions), as a GGUF consumer would."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = json.dumps
    return env.from_string(template).render(**context)


def test_gguf_chat_template_renders_like_the_tokenizer(exports, tokenizer):
    reader = GGUFReader(exports["tiny"].gguf["f32"])
    template = field(reader, "tokenizer.chat_template")
    assert template == inference_chat_template(tokenizer.chat_template)
    assert not re.search(r"\{%-?\s*(end)?generation\b", template)
    with pytest.raises(jinja2.TemplateSyntaxError):  # why the training-only tags are rewritten
        render_like_llama_cpp(tokenizer.chat_template, messages=CONVERSATION)
    for add_generation_prompt in (False, True):
        rendered = render_like_llama_cpp(
            template, messages=CONVERSATION, add_generation_prompt=add_generation_prompt
        )
        assert rendered == tokenizer.apply_chat_template(
            CONVERSATION, tokenize=False, add_generation_prompt=add_generation_prompt
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_transformers_gguf_loader_gives_our_logits(exports, preset, dtype):
    """transformers 5.23 reads qwen3/qwen3moe GGUF tensors, but its metadata map skips two keys
    our sizes need: `attention.key_length` for dense qwen3 (it falls back to Qwen3's head_dim 128)
    and `expert_feed_forward_length` (it falls back to 768); both are taken from the file here.
    `from_pretrained(gguf_file=)` also insists on `accelerate`, so the loader it calls is used."""
    e = exports[preset]
    path = e.gguf[dtype]
    reader = GGUFReader(path)
    arch = field(reader, "general.architecture")
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    assert config.model_type == ("qwen3_moe" if arch == "qwen3moe" else "qwen3")
    sizes = (config.hidden_size, config.num_hidden_layers, config.vocab_size)
    assert sizes == (128, 4, e.model.config.vocab_size)
    assert config.rope_parameters["rope_theta"] == 1e6 and config.tie_word_embeddings
    config.head_dim = field(reader, f"{arch}.attention.key_length")
    if arch == "qwen3moe":
        config.moe_intermediate_size = field(reader, f"{arch}.expert_feed_forward_length")
        assert (config.num_experts, config.num_experts_per_tok) == (4, 2)
    model = AutoModelForCausalLM.from_config(config).eval()
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # tied to the embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight

    ids = sample_ids(e.model.config.vocab_size, seed=2)
    with torch.no_grad():
        theirs, ours = model(ids).logits, e.model(ids).logits
    tolerance = 1e-4 if dtype == "f32" else 2e-2
    torch.testing.assert_close(theirs, ours, atol=tolerance, rtol=0)


def test_transformers_gguf_tokenizer_encodes_like_ours(exports, tokenizer):
    path = exports["tiny-moe"].gguf["f32"]
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in (SAMPLE_TEXT, *dialogue_lines()[:200]):
        assert from_gguf.encode(text) == tokenizer.encode(text), text


# ---------------------------------------------------------------------------- refusals


def test_gguf_refuses_moe_without_renormalised_top_k(exports, tmp_path):
    hf_dir = tmp_path / "hf"
    shutil.copytree(exports["tiny-moe"].hf_dir, hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "norm_topk_prob": False}))
    with pytest.raises(NotImplementedError, match="renormalises"):
        export_gguf(hf_dir, tmp_path / "model.gguf")
    assert list(tmp_path.iterdir()) == [hf_dir]  # no partial file


def test_token_table_refuses_a_tokenizer_larger_than_the_model(tokenizer):
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    with pytest.raises(ValueError, match="only 100"):
        token_table(state, 100)


def test_export_params_validate():
    assert ExportParams().gguf_dtype == "f16"
    with pytest.raises(ValueError):
        ExportParams(gguf_dtype="q4_0")
