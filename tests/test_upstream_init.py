"""Starting from upstream MiniMind artefacts: its tokenizer and its `.pth` weights.

The upstream files are rebuilt here in miniature: a state dict laid out as upstream's
`torch.save({k: v.half() ...})` writes it (both `lm_head.weight` and the tied embedding), and
a tokenizer folder with upstream's 36 added tokens and its chat template (model/
tokenizer_config.json of jingyaogong/minimind, commit 101d7df2), whose assistant turns always
render `<think>\\n…\\n</think>\\n\\n` and carry no `{% generation %}` marks.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from minimind.data.fetch import DownloadError, sha256_file
from minimind.data.pretrain_tokens import IGNORE_INDEX
from minimind.data.sft_tokens import tokenize_conversation
from minimind.model import MiniMindForCausalLM, preset_config
from minimind.model.upstream import (
    WeightsError,
    check_weights_uri,
    convert_state_dict,
    fetch_weights,
    load_weights,
    read_state_dict,
)
from minimind.tokenizer import (
    check_pipeline_tokenizer,
    encode_chat,
    has_generation_blocks,
    load_pretrained_tokenizer,
    train_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 320


def tiny_config(**overrides):
    return preset_config("tiny", vocab_size=VOCAB, num_hidden_layers=2, **overrides)


def upstream_state(model: torch.nn.Module, rope_buffers: bool = True) -> dict[str, torch.Tensor]:
    """What upstream's trainer saves for `model`: every state_dict key (lm_head.weight too),
    fp16, plus the RoPE tables an older upstream kept as persistent buffers."""
    state = {key: value.detach().half().cpu() for key, value in model.state_dict().items()}
    if rope_buffers:
        head_dim = model.config.head_dim
        state["model.freqs_cos"] = torch.ones(64, head_dim).half()
        state["model.freqs_sin"] = torch.zeros(64, head_dim).half()
    return state


def fp16_reference(config, seed: int = 0) -> tuple[MiniMindForCausalLM, dict]:
    """A model whose weights survive the fp16 round trip unchanged, and its upstream dict."""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config)
    state = upstream_state(model)
    model.load_state_dict({k: v.float() for k, v in state.items() if "freqs" not in k})
    return model.eval(), state


def logits(model: MiniMindForCausalLM) -> torch.Tensor:
    ids = torch.arange(2 * 12).remainder(VOCAB).view(2, 12)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


# -- weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_upstream_pth_loads_to_the_same_logits(tmp_path: Path, prefix: str) -> None:
    config = tiny_config()
    reference, state = fp16_reference(config)
    path = tmp_path / "llm_128.pth"
    torch.save({prefix + key: value for key, value in state.items()}, path)

    torch.manual_seed(1)  # different random weights, all to be overwritten
    model = MiniMindForCausalLM(config)
    load_weights(model, path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert torch.equal(logits(model), logits(reference))


def test_upstream_resume_checkpoint_uses_its_model_entry(tmp_path: Path) -> None:
    config = tiny_config()
    reference, state = fp16_reference(config)
    path = tmp_path / "pretrain_128_resume.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 0,
                "step": 7, "world_size": 1, "wandb_id": None}, path)
    model = MiniMindForCausalLM(config)
    load_weights(model, path)
    assert torch.equal(logits(model), logits(reference))


def test_moe_layout_matches_upstream_names(tmp_path: Path) -> None:
    config = preset_config("tiny-moe", vocab_size=VOCAB, num_hidden_layers=2)
    reference, state = fp16_reference(config)
    for key in ("model.layers.0.mlp.gate.weight", "model.layers.1.mlp.experts.3.down_proj.weight",
                "model.layers.0.mlp.experts.0.gate_proj.weight",
                "model.layers.0.mlp.experts.2.up_proj.weight"):
        assert key in state
    assert state["model.layers.0.mlp.gate.weight"].shape == (config.num_experts, 128)
    torch.save(state, tmp_path / "pretrain_128_moe.pth")
    model = MiniMindForCausalLM(config)
    load_weights(model, tmp_path / "pretrain_128_moe.pth")
    assert torch.equal(logits(model), logits(reference))


def test_missing_and_unexpected_keys_are_each_named() -> None:
    config = tiny_config()
    _, state = fp16_reference(config)
    del state["model.layers.1.self_attn.q_norm.weight"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\): "
                       r"model\.layers\.1\.self_attn\.q_norm\.weight"):
        convert_state_dict(state, config)
    _, state = fp16_reference(config)
    state["vision_proj.mlp.0.weight"] = torch.zeros(4, 4)
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): vision_proj\.mlp\.0\.weight"):
        convert_state_dict(state, config)
    del state["model.norm.weight"]
    with pytest.raises(WeightsError) as both:
        convert_state_dict(state, config)
    assert "model.norm.weight" in str(both.value) and "vision_proj.mlp.0.weight" in str(both.value)


def test_shape_mismatch_names_the_key_and_both_shapes() -> None:
    _, state = fp16_reference(tiny_config())
    with pytest.raises(WeightsError) as error:
        convert_state_dict(state, tiny_config(intermediate_size=256))
    message = str(error.value)
    assert "model.layers.0.mlp.gate_proj.weight: the weights have shape [448, 128], the model " \
           "[256, 128]" in message
    with pytest.raises(WeightsError, match=r"model\.embed_tokens\.weight: the weights have shape "
                       r"\[320, 128\], the model \[400, 128\][\s\S]*vocabularies differ"):
        convert_state_dict(state, preset_config("tiny", vocab_size=400, num_hidden_layers=2))


def test_an_untied_head_is_refused_by_a_tied_model() -> None:
    config = tiny_config()
    _, state = fp16_reference(config)
    state["lm_head.weight"] = state["lm_head.weight"].clone() + 1
    with pytest.raises(WeightsError, match="lm_head.weight differs from model.embed_tokens"):
        convert_state_dict(state, config)
    _, state = fp16_reference(config)
    del state["lm_head.weight"]  # a save_pretrained folder drops the tied copy: fine
    assert "lm_head.weight" not in convert_state_dict(state, config)


def test_our_own_safetensors_folder_loads(tmp_path: Path) -> None:
    config = tiny_config()
    reference, _ = fp16_reference(config)
    reference.save_pretrained(tmp_path / "pretrain")
    model = MiniMindForCausalLM(config)
    load_weights(model, tmp_path / "pretrain")
    assert torch.equal(logits(model), logits(reference))
    assert read_state_dict(tmp_path / "pretrain" / "model.safetensors").keys() == \
        read_state_dict(tmp_path / "pretrain").keys()


def test_unreadable_weights_are_a_weights_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="not a readable torch state dict"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="holds no"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize(("uri", "ok"), [
    ("hf://jingyaogong/minimind-3v-pytorch/llm_768.pth", True),
    ("hf://models/jingyaogong/minimind-3-pytorch/full_sft_768.pth@main", True),
    ("https://example.com/llm_768.pth", True),
    ("file://weights/llm_768.pth", True),
    ("out/pretrain_768.pth", True),
    ("hf://jingyaogong/minimind-3v-pytorch", False),
    ("s3://bucket/llm_768.pth", False),
    ("  ", False),
])
def test_init_from_forms(uri: str, ok: bool) -> None:
    if ok:
        assert check_weights_uri(uri) == uri
    else:
        with pytest.raises(ValueError):
            check_weights_uri(uri)


def test_fetch_weights_local_https_and_hub(tmp_path: Path, loopback, monkeypatch) -> None:
    body = b"weights" * 100
    (tmp_path / "w.pth").write_bytes(body)
    for uri in ("w.pth", "file://w.pth", f"file://{tmp_path / 'w.pth'}"):
        got = fetch_weights(uri, root=tmp_path, cache_dir=tmp_path / "cache")
        assert got.path == tmp_path / "w.pth" and got.sha256 == sha256_file(tmp_path / "w.pth")
    with pytest.raises(DownloadError, match="does not exist"):
        fetch_weights("missing.pth", root=tmp_path, cache_dir=tmp_path / "cache")

    loopback.files["/files/llm_768.pth"] = body
    uri = f"{loopback.url}/files/llm_768.pth"
    first = fetch_weights(uri, root=tmp_path, cache_dir=tmp_path / "cache")
    served = len(loopback.requests)
    again = fetch_weights(uri, root=tmp_path, cache_dir=tmp_path / "cache")
    assert first.path.read_bytes() == body and again.path == first.path
    assert len(loopback.requests) == served  # a rerun does not download again

    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", loopback.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        loopback.url + "/{repo_id}/resolve/{revision}/{filename}")
    loopback.files["/someone/minimind-3v-pytorch/resolve/main/llm_768.pth"] = body
    hub = fetch_weights("hf://someone/minimind-3v-pytorch/llm_768.pth", root=tmp_path,
                        cache_dir=tmp_path / "cache")
    assert hub.path.read_bytes() == body and hub.sha256 == first.sha256


def test_stage_helper_names_the_key(tmp_path: Path) -> None:
    from pipelines.init_weights import init_from_weights

    config = tiny_config()
    reference, state = fp16_reference(config)
    torch.save(state, tmp_path / "llm.pth")
    model = MiniMindForCausalLM(config)
    info = init_from_weights(model, "llm.pth", tmp_path, "pretrain.init_from")
    assert info == {"source": "llm.pth", "sha256": sha256_file(tmp_path / "llm.pth")}
    assert torch.equal(logits(model), logits(reference))
    with pytest.raises(SystemExit, match="pretrain.init_from: cannot fetch 'nope.pth'"):
        init_from_weights(model, "nope.pth", tmp_path, "pretrain.init_from")
    torch.save({k: v for k, v in state.items() if k != "model.norm.weight"}, tmp_path / "bad.pth")
    with pytest.raises(SystemExit, match=r"sft.init_from: 'bad.pth'[\s\S]*model\.norm\.weight"):
        init_from_weights(model, "bad.pth", tmp_path, "sft.init_from")


# -- tokenizer -------------------------------------------------------------------------------
UPSTREAM_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|audio_start|>",
    "<|audio_end|>", "<|audio_pad|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>",  # ids 0-20: special
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    *[f"<|buffer{i}|>" for i in range(1, 10)],  # ids 21-35: plain added tokens
]
UPSTREAM_SPECIAL = 21
# model/chat_template.jinja of jingyaogong/minimind (tokenizer_config.json, commit 101d7df2).
UPSTREAM_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if true %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if open_thinking is defined and open_thinking is true %}
        {{- '<think>\n' }}
    {%- else %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501 - verbatim upstream template
CORPUS = ["The quick brown fox jumps over the lazy dog.", "你好，世界。今天天气很好。",
          "What is the capital of France? Paris is.", "def f(x): return x + 1"] * 40


def upstream_like_tokenizer(tokens: list[str] = UPSTREAM_TOKENS, template: str | None =
                            UPSTREAM_TEMPLATE, eos: str = "<|im_end|>"):
    """A PreTrainedTokenizerFast laid out like upstream's model/ tokenizer (tiny vocab)."""
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[
        AddedToken(t, normalized=False) for t in tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS, trainer=trainer)
    state = json.loads(backend.to_str())
    for added in state["added_tokens"]:
        added["special"] = added["id"] < UPSTREAM_SPECIAL
    kwargs = {} if template is None else {"chat_template": template}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)), bos_token="<|im_start|>",
        eos_token=eos, pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        model_max_length=131072, clean_up_tokenization_spaces=False, **kwargs)


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("upstream") / "model"
    upstream_like_tokenizer().save_pretrained(folder)
    return folder


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of China?"},
    {"role": "assistant", "content": "Beijing.", "reasoning_content": "The capital is Beijing."},
]


def trained_spans(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    spans, current = [], []
    for token, flag in zip([*ids, -1], [*mask, 0], strict=True):
        if flag:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans


def test_upstream_template_gets_assistant_only_masks(upstream_dir: Path) -> None:
    tokenizer, origin = load_pretrained_tokenizer(str(upstream_dir))
    assert origin["source_kind"] == "dir"
    assert not has_generation_blocks(tokenizer)
    assert check_pipeline_tokenizer(tokenizer) == []
    ids, mask = encode_chat(tokenizer, CONVERSATION)
    assert trained_spans(tokenizer, ids, mask) == [
        "<think>\n\n</think>\n\nParis.<|im_end|>",
        "<think>\nThe capital is Beijing.\n</think>\n\nBeijing.<|im_end|>",
    ]
    # The same ids as the template's own tokenization, and labels only on those spans.
    assert ids == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True
                                                )["input_ids"]
    input_ids, labels = tokenize_conversation(tokenizer, CONVERSATION, max_len=4096)
    trained = [t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "".join(trained_spans(tokenizer, ids, mask))


def test_upstream_template_renders_tools_from_the_system_message(upstream_dir: Path) -> None:
    tokenizer, _ = load_pretrained_tokenizer(str(upstream_dir))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [{"role": "system", "content": "sys", "tools": json.dumps(tools)},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "",
                 "tool_calls": json.dumps([{"name": "get_weather", "arguments": {"city": "X"}}])}]
    ids, mask = encode_chat(tokenizer, messages)
    context = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert "<tools>" in context and "get_weather" in context
    assert trained_spans(tokenizer, ids, mask) == [
        '<think>\n\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "X"}}\n</tool_call><|im_end|>']


def test_our_template_masks_are_unchanged() -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=400, show_progress=False)
    ids, mask = encode_chat(tokenizer, CONVERSATION)
    reference = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
    assert (ids, mask) == (reference["input_ids"], reference["assistant_masks"])
    assert check_pipeline_tokenizer(tokenizer) == []


def test_missing_special_tokens_are_named() -> None:
    tokens = [t for t in UPSTREAM_TOKENS if t not in ("<|audio_pad|>", "<think>")]
    with pytest.raises(ValueError, match=r"missing tokens the pipeline needs: <\|audio_pad\|>, "
                       r"<think>"):
        check_pipeline_tokenizer(upstream_like_tokenizer(tokens))


def test_unusable_templates_and_eos_are_errors() -> None:
    with pytest.raises(ValueError, match="no chat template"):
        check_pipeline_tokenizer(upstream_like_tokenizer(template=None))
    alpaca = ("{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n{% endfor %}"
              "{% if add_generation_prompt %}### assistant:\n{% endif %}")
    with pytest.raises(ValueError, match="assistant mask of a probe"):
        check_pipeline_tokenizer(upstream_like_tokenizer(template=alpaca))
    with pytest.raises(ValueError, match="eos_token is '<|endoftext|>'"):
        check_pipeline_tokenizer(upstream_like_tokenizer(eos="<|endoftext|>"))


def write_held_out(root: Path) -> None:
    folder = root / "data" / "clean" / "pretrain"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["Hello there, world.", "你好世界"], "lang": ["en", "zh"]}),
                   folder / "val-00000.parquet")


class FakeContext(SimpleNamespace):
    def path(self, relative: str | Path) -> Path:
        return self.root / relative

    def write_metrics(self, relative: str | Path, metrics: dict) -> None:
        self.path(relative).parent.mkdir(parents=True, exist_ok=True)
        self.path(relative).write_text(json.dumps(metrics))


def run_tokenizer_stage(root: Path, pretrained: str) -> dict:
    from pipelines.params import TokenizerParams
    from stages import tokenizer as stage

    ctx = FakeContext(root=root, params=SimpleNamespace(
        tokenizer=TokenizerParams(pretrained=pretrained, vocab_size=9999)))
    stage.main(ctx)
    return json.loads((root / "metrics" / "tokenizer.json").read_text())


def test_tokenizer_stage_saves_a_pretrained_folder(tmp_path: Path, upstream_dir: Path) -> None:
    from transformers import AutoTokenizer

    write_held_out(tmp_path)
    metrics = run_tokenizer_stage(tmp_path, str(upstream_dir))
    source = AutoTokenizer.from_pretrained(upstream_dir)
    saved = AutoTokenizer.from_pretrained(tmp_path / "models" / "tokenizer")
    assert metrics["source"] == str(upstream_dir) and metrics["source_kind"] == "dir"
    assert metrics["sha256"] == sha256_file(upstream_dir / "tokenizer.json")
    assert metrics["vocab_size"] == len(source) == len(saved)  # vocab_size: 9999 is ignored
    assert set(metrics["bytes_per_token"]) == {"en", "zh"} and metrics["held_out_docs"]["en"] == 1
    assert saved.chat_template == source.chat_template == UPSTREAM_TEMPLATE
    assert saved.convert_tokens_to_ids("<|image_pad|>") == 12
    assert saved.convert_tokens_to_ids("<|audio_pad|>") == 16
    for text in CORPUS[:4]:
        assert saved.encode(text) == source.encode(text)
    assert encode_chat(saved, CONVERSATION) == encode_chat(source, CONVERSATION)


def test_tokenizer_stage_refuses_a_tokenizer_without_the_pipeline_tokens(tmp_path: Path) -> None:
    write_held_out(tmp_path)
    upstream_like_tokenizer([t for t in UPSTREAM_TOKENS if t != "<|image_pad|>"]).save_pretrained(
        tmp_path / "vendor")
    with pytest.raises(SystemExit, match=r"tokenizer.pretrained: [\s\S]*<\|image_pad\|>"):
        run_tokenizer_stage(tmp_path, "vendor")
    assert not (tmp_path / "models" / "tokenizer").exists()
    with pytest.raises(SystemExit, match="neither a folder"):
        run_tokenizer_stage(tmp_path, "no-such-folder")


def test_hub_tokenizer_through_hf_endpoint(tmp_path: Path, upstream_dir: Path, loopback,
                                           monkeypatch) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", loopback.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        loopback.url + "/{repo_id}/resolve/{revision}/{filename}")
    for file in upstream_dir.iterdir():  # model repos have no /models prefix on resolve URLs
        loopback.files[f"/someone/minimind-3/resolve/v1/{file.name}"] = file.read_bytes()
    tokenizer, origin = load_pretrained_tokenizer("someone/minimind-3@v1", root=tmp_path,
                                                  cache_dir=tmp_path / "cache")
    assert origin == {"source": "someone/minimind-3@v1", "source_kind": "hub",
                      "sha256": sha256_file(upstream_dir / "tokenizer.json")}
    assert tokenizer.chat_template == UPSTREAM_TEMPLATE
    assert check_pipeline_tokenizer(tokenizer) == []
    assert all("/resolve/v1/" in request.path for request in loopback.requests)
    with pytest.raises(RuntimeError, match="could not fetch the tokenizer of hub repo "
                       "someone/absent"):
        load_pretrained_tokenizer("someone/absent", root=tmp_path, cache_dir=tmp_path / "cache")


# -- the stages, end to end ------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_starts_from_an_upstream_tokenizer_and_weights(tmp_path: Path,
                                                                upstream_dir: Path) -> None:
    """tokenizer.pretrained -> tokenize -> pretrain.init_from (.pth) -> sft.init_from (.pth)."""
    import shutil
    import sys

    from safetensors.torch import load_file

    from pipelines.params import load_params
    from tests.project import DVC, make_project, run, set_param, stage_env

    root = tmp_path / "project"
    env = stage_env(OMP_NUM_THREADS="1")
    make_project(root, env)
    shutil.copytree(upstream_dir, root / "vendor" / "model")
    set_param(root, "tokenizer.pretrained", "vendor/model")
    run([DVC, "repro", "tokenize"], root, env)
    metrics = json.loads((root / "metrics" / "tokenizer.json").read_text())
    vocab = len(load_pretrained_tokenizer(str(upstream_dir))[0])
    assert metrics["source"] == "vendor/model" and metrics["vocab_size"] == vocab

    # An upstream-style checkpoint for this project's model section and that tokenizer.
    config = load_params(root / "params.yaml").model.to_config(vocab_size=vocab)
    _, state = fp16_reference(config, seed=3)
    (root / "upstream").mkdir()
    torch.save(state, root / "upstream" / "llm_128.pth")
    set_param(root, "pretrain.init_from", "upstream/llm_128.pth")
    set_param(root, "pretrain.train.max_steps", 2)
    run([sys.executable, "-m", "stages.pretrain"], root, env)
    pretrain = json.loads((root / "metrics" / "pretrain.json").read_text())
    assert pretrain["init_from"] == {"source": "upstream/llm_128.pth",
                                     "sha256": sha256_file(root / "upstream" / "llm_128.pth")}

    # sft from a .pth of models/pretrain's own weights (as upstream's DDP + compile would save
    # them) starts exactly where sft from models/pretrain starts.
    run([sys.executable, "-m", "stages.sft"], root, env)
    baseline = json.loads((root / "metrics" / "sft.json").read_text())
    weights = load_file(root / "models" / "pretrain" / "model.safetensors")
    torch.save({f"module._orig_mod.{k}": v for k, v in weights.items()}, root / "again.pth")
    set_param(root, "sft.init_from", "file://again.pth")
    run([sys.executable, "-m", "stages.sft"], root, env)
    started = json.loads((root / "metrics" / "sft.json").read_text())
    assert started["val_loss_before"] == baseline["val_loss_before"]
    assert started["init_from"]["source"] == "file://again.pth"
