"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP.

A tiny MiniMind model is trained for a few dozen steps to answer three prompts with fixed
replies that end in <|im_end|>, so greedy replies are known text. The server runs under uvicorn
in a background thread; replies are checked against transformers' own `generate` (through
`minimind.generation.chat_reply`), streaming against non-streaming, and every kind of bad
request against OpenAI's error shape. The terminal chat is driven with scripted input.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minimind import chat
from minimind.export.hf import export_hf
from minimind.generation import chat_reply
from minimind.model import MiniMindForCausalLM, preset_config
from minimind.serve import __main__ as serve_main
from minimind.serve import create_app
from minimind.serve.engine import ChatEngine, GenerationSettings, _safe_prefix_length
from minimind.tokenizer import train_tokenizer
from tests.server import uvicorn_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")

API_KEY = "test-key"
MODEL_NAME = "tiny-chat"
MAX_TOKENS_LIMIT = 64
MAX_REQUEST_BYTES = 64 * 1024
ANSWERS = {
    "hello": "hi there, how can I help you today?",
    "what is the capital of france?": "the capital of france is paris.",
    "tell me a story": "once upon a time a small cat sat on a warm mat.",
}
HELLO = [{"role": "user", "content": "hello"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]], **options: Any) -> list[int]:
    return tokenizer.apply_chat_template(messages, return_dict=True, **options)["input_ids"]


def train_tiny_chat_model(folder: Path) -> None:
    """Tokenizer + 2-layer MiniMind that has memorised ANSWERS (about a second on CPU)."""
    tokenizer = train_tokenizer([f"{q} {a}" for q, a in ANSWERS.items()] * 20, vocab_size=400,
                                min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset_config("tiny", vocab_size=len(tokenizer),
                                              num_hidden_layers=2))
    rows = [chat_ids(tokenizer, [{"role": "user", "content": q},
                                 {"role": "assistant", "content": a}])
            for q, a in ANSWERS.items()]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = labels[i, :len(row)] = torch.tensor(row)
    attention_mask = (labels != -100).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-chat-model")
    train_tiny_chat_model(folder)
    return folder


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> tuple[Any, Any]:
    """The same folder loaded independently of the server, for transformers' `generate`."""
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), \
        AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def base_url(model_dir: Path) -> Iterator[str]:
    """uvicorn serving the model in a background thread on a free port."""
    app = create_app(model_dir, model_name=MODEL_NAME, api_key=API_KEY,
                     max_tokens_limit=MAX_TOKENS_LIMIT, max_request_bytes=MAX_REQUEST_BYTES)
    with uvicorn_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=f"{base_url}/v1", max_retries=0, timeout=60)


def complete(client: openai.OpenAI, messages: list[dict[str, Any]] = HELLO,
             **options: Any) -> Any:
    return client.chat.completions.create(model=MODEL_NAME, messages=messages, **options)


def stream(client: openai.OpenAI, messages: list[dict[str, Any]] = HELLO,
           **options: Any) -> list[Any]:
    return list(complete(client, messages, stream=True, **options))


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_models_list_names_the_served_model(client: openai.OpenAI, base_url: str) -> None:
    assert [model.id for model in client.models.list()] == [MODEL_NAME]
    health = requests.get(f"{base_url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["model"] == MODEL_NAME


@pytest.mark.parametrize("prompt", list(ANSWERS))
def test_greedy_reply_matches_transformers_generate(client: openai.OpenAI, reference: Any,
                                                    prompt: str) -> None:
    model, tokenizer = reference
    messages = [{"role": "user", "content": prompt}]
    expected = chat_reply(model, tokenizer, messages, max_new_tokens=MAX_TOKENS_LIMIT)
    response = complete(client, messages, temperature=0)

    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text == ANSWERS[prompt]
    assert choice.finish_reason == "stop" and expected.stopped
    prompt_ids = chat_ids(tokenizer, messages, add_generation_prompt=True)
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == expected.new_tokens  # <|im_end|> included
    assert response.usage.total_tokens == len(prompt_ids) + expected.new_tokens
    assert response.object == "chat.completion" and response.model == MODEL_NAME


def test_text_content_parts_and_system_messages_reach_the_template(client: openai.OpenAI
                                                                   ) -> None:
    plain = complete(client, temperature=0)
    parts = complete(client, [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                     temperature=0)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens
    with_system = complete(client, [{"role": "system", "content": "be brief"}, *HELLO],
                           temperature=0)
    assert with_system.usage.prompt_tokens > plain.usage.prompt_tokens


@pytest.mark.parametrize("sampling", [
    {"temperature": 0},
    {"temperature": 1.5, "seed": 7},
    {"temperature": 1.5, "top_p": 0.5, "seed": 3, "presence_penalty": 0.5},
])
def test_streamed_deltas_equal_the_non_streamed_reply(client: openai.OpenAI,
                                                      sampling: dict[str, Any]) -> None:
    whole = complete(client, **sampling)
    chunks = stream(client, stream_options={"include_usage": True}, **sampling)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert streamed_text(chunks) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_seeded_sampling_repeats_and_tiny_top_p_or_temperature_is_greedy(
        client: openai.OpenAI) -> None:
    first, second = (complete(client, temperature=2, seed=11, max_tokens=20) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content
    nucleus = complete(client, temperature=2, top_p=1e-6, max_tokens=20)  # only the top token
    assert nucleus.choices[0].message.content == ANSWERS["hello"]
    cold = complete(client, temperature=1e-30, max_tokens=20)  # no inf - inf on the way
    assert cold.choices[0].message.content == ANSWERS["hello"]


def test_tool_calls_and_tools_are_rendered_by_the_chat_template(client: openai.OpenAI,
                                                                reference: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [{"role": "user", "content": "weather in paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    response = complete(client, messages, tools=tools, temperature=0, max_tokens=8)
    expected = chat_ids(reference[1], messages, tools=tools, add_generation_prompt=True)
    assert response.usage.prompt_tokens == len(expected)


@pytest.mark.parametrize(("stop", "expected"), [
    ("help", "hi there, how can I "),
    (["zzz", "there"], "hi "),
    (["you t", "can I h"], "hi there, how "),  # the earliest stop string wins
    ("no such text", ANSWERS["hello"]),
])
def test_stop_strings_end_the_reply_and_are_not_returned(client: openai.OpenAI,
                                                         stop: str | list[str],
                                                         expected: str) -> None:
    whole = complete(client, temperature=0, stop=stop)
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "stop"
    assert streamed_text(stream(client, temperature=0, stop=stop)) == expected


@pytest.mark.parametrize("limit", [{"max_tokens": 3}, {"max_completion_tokens": 5}])
def test_max_tokens_cuts_the_reply_with_finish_reason_length(client: openai.OpenAI,
                                                             reference: Any,
                                                             limit: dict[str, int]) -> None:
    model, tokenizer = reference
    tokens = next(iter(limit.values()))
    expected = chat_reply(model, tokenizer, HELLO, max_new_tokens=tokens)
    response = complete(client, temperature=0, **limit)

    assert response.choices[0].finish_reason == "length" and not expected.stopped
    assert response.usage.completion_tokens == tokens
    assert response.choices[0].message.content == expected.text
    chunks = stream(client, temperature=0, **limit)
    assert streamed_text(chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_fifty_concurrent_requests_all_succeed(client: openai.OpenAI, base_url: str) -> None:
    prompts = list(ANSWERS) * 17

    def ask(i: int) -> str:
        messages = [{"role": "user", "content": prompts[i]}]
        if i % 2:
            return streamed_text(stream(client, messages, temperature=0))
        return complete(client, messages, temperature=0).choices[0].message.content

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        replies = pool.map(ask, range(50))
        health = requests.get(f"{base_url}/health", timeout=10)  # answered while busy
        health_seconds = time.perf_counter() - started
        replies = list(replies)
    wall = time.perf_counter() - started

    assert health.status_code == 200
    assert replies == [ANSWERS[prompts[i]] for i in range(50)]
    print(f"\n50 concurrent requests: {wall:.2f} s wall; /health answered after "
          f"{health_seconds:.2f} s")


@pytest.mark.parametrize(("options", "status", "param", "code"), [
    ({"model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages",
     "context_length_exceeded"),
    ({"max_tokens": MAX_TOKENS_LIMIT + 1}, 400, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": 10_000}, 400, "max_completion_tokens", "invalid_value"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role",
     "invalid_value"),
    ({"messages": []}, 400, "messages", "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages[0].content", "invalid_value"),
    ({"n": 2}, 400, "n", "invalid_value"),
    ({"temperature": 3}, 400, "temperature", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
])
def test_bad_requests_get_openai_shaped_4xx(client: openai.OpenAI, options: dict[str, Any],
                                            status: int, param: str, code: str) -> None:
    request = {"model": MODEL_NAME, "messages": HELLO, **options}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    error = caught.value
    assert error.status_code == status
    assert set(error.response.json()["error"]) == ERROR_FIELDS
    assert (error.param, error.code, error.type) == (param, code, "invalid_request_error")


def test_a_bug_in_generation_is_a_json_500_or_a_stream_error_event(
        base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Iterator[Any]:
        raise RuntimeError("simulated bug")

    def fresh_client() -> openai.OpenAI:  # uvicorn closes the connection after a 500
        return openai.OpenAI(api_key=API_KEY, base_url=f"{base_url}/v1", max_retries=0)

    monkeypatch.setattr(ChatEngine, "stream", broken)
    with pytest.raises(openai.InternalServerError) as caught:
        complete(fresh_client())
    assert set(caught.value.response.json()["error"]) == ERROR_FIELDS
    assert caught.value.type == "server_error" and "simulated" not in caught.value.message
    with pytest.raises(openai.APIError) as caught:
        stream(fresh_client())
    assert caught.value.body["type"] == "server_error"


def test_wrong_api_key_is_rejected(base_url: str) -> None:
    intruder = openai.OpenAI(api_key="wrong", base_url=f"{base_url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        intruder.models.list()
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        intruder.chat.completions.create(model=MODEL_NAME, messages=HELLO)


def raw_post(base_url: str, data: Any, api_key: str | None = API_KEY) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return requests.post(f"{base_url}/v1/chat/completions", data=data, headers=headers,
                         timeout=30)


def oversized_chunks() -> Iterator[bytes]:
    """A body sent chunked (no Content-Length), so the limit must be enforced while reading."""
    yield b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "'
    for _ in range(MAX_REQUEST_BYTES // 1024 + 1):
        yield b"x" * 1024
    yield b'"}]}'


@pytest.mark.parametrize(("body", "api_key", "status", "code"), [
    ('{"model": "tiny-chat", "messages": [', API_KEY, 400, "invalid_json"),
    ("[1, 2]", API_KEY, 400, "invalid_value"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', API_KEY, 400,
     "missing_required_parameter"),
    ("{}", None, 401, "invalid_api_key"),
    ("x" * (MAX_REQUEST_BYTES + 1), API_KEY, 413, "request_too_large"),
    (oversized_chunks, API_KEY, 413, "request_too_large"),
])
def test_raw_http_errors_are_openai_shaped(base_url: str, body: Any, api_key: str | None,
                                           status: int, code: str) -> None:
    response = raw_post(base_url, body() if callable(body) else body, api_key)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS and error["code"] == code
    assert error["type"] == "invalid_request_error" and error["message"]


def test_unknown_route_is_an_openai_shaped_404(base_url: str) -> None:
    response = requests.get(f"{base_url}/v1/engines", timeout=10)
    assert response.status_code == 404 and set(response.json()["error"]) == ERROR_FIELDS


@pytest.mark.parametrize(("text", "stops", "safe"), [
    ("hello wor", ("world",), 6),      # "wor" may become the stop string
    ("hello wor", ("xyz",), 9),
    ("hello w", ("w", "wor"), 6),
    ("caf\ufffd", (), 3),              # an unfinished UTF-8 character waits for its bytes
    ("", ("stop",), 0),
])
def test_streaming_holds_back_text_that_may_still_change(text: str, stops: tuple[str, ...],
                                                         safe: int) -> None:
    assert _safe_prefix_length(text, stops) == safe


def test_an_exported_qwen3_folder_serves_the_same_replies(model_dir: Path,
                                                          tmp_path: Path) -> None:
    qwen_dir = export_hf(model_dir, tmp_path / "qwen3")
    engine = ChatEngine.from_folder(qwen_dir)
    assert type(engine.model).__name__ == "Qwen3ForCausalLM"
    settings = GenerationSettings(max_new_tokens=MAX_TOKENS_LIMIT, temperature=0, stop=("paris",))
    prompt = engine.prompt_ids([{"role": "user", "content": "hello"}])
    assert "".join(delta.text for delta in engine.stream(prompt, settings)) == ANSWERS["hello"]
    prompt = engine.prompt_ids([{"role": "user", "content": "what is the capital of france?"}])
    deltas = list(engine.stream(prompt, settings))
    assert "".join(d.text for d in deltas) == "the capital of france is "
    assert deltas[-1].finish_reason == "stop"


def test_engine_and_server_refuse_impossible_limits(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        create_app(model_dir, max_prompt_tokens=10**6)
    assert ChatEngine.from_folder(model_dir).context_length == 4096  # the "tiny" preset


def test_serve_cli_reads_the_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("MINIMIND_API_KEY", "from-env")
    args = serve_main.parse_args(["--model", "m"])
    assert (args.api_key, args.host, args.port) == ("from-env", "127.0.0.1", 8000)
    assert serve_main.parse_args(["--model", "m", "--api-key", "k"]).api_key == "k"


def test_chat_cli_keeps_the_conversation_and_resets(model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    lines = iter(["hello", "tell me a story", "/reset", "hello", "/exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    seen_roles: list[list[str]] = []
    original = ChatEngine.prompt_ids

    def spy(self: ChatEngine, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        seen_roles.append([m["role"] for m in messages])
        return original(self, messages, tools)

    monkeypatch.setattr(ChatEngine, "prompt_ids", spy)
    chat.main(["--model", str(model_dir), "--temperature", "0", "--system", "be kind"])

    assert seen_roles == [["system", "user"], ["system", "user", "assistant", "user"],
                          ["system", "user"]]
    printed = capsys.readouterr().out
    assert printed.count(ANSWERS["hello"]) == 2 and ANSWERS["tell me a story"] in printed
