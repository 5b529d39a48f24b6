"""The remote chat backend against a tiny fake OpenAI-compatible HTTP server: request mapping, every failure's
message (and its timing), Stop, adapters as served names. The real server is in tests/integration."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from core.backends.openai_backend import OpenAIBackend, OpenAIOptions
from core.backends.openai_request import context_of, fit_messages, sampling_request
from core.config import AppConfig, GenerationSettings
from core.errors import AdapterError, ChatError, ConfigError
from tests.fakes import FakeOpenAIServer as FakeServer

KEY = "sk-very-secret-key-123"
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=16)
ASK = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


def backend(url: str, **kw: object) -> OpenAIBackend:
    return OpenAIBackend(OpenAIOptions(base_url=url, **kw))


def reply(b: OpenAIBackend, **kw: object) -> list:
    return list(b.stream(ASK, GREEDY, **kw))


def test_sampling_maps_to_the_request():
    req = sampling_request(GenerationSettings(temperature=0.5, top_p=0.8, top_k=20, repetition_penalty=1.2, seed=7))
    assert req["temperature"] == 0.5 and req["top_p"] == 0.8 and req["seed"] == 7 and req["max_tokens"] == 256
    assert req["extra_body"] == {"top_k": 20, "repeat_penalty": 1.2, "repetition_penalty": 1.2}
    greedy = sampling_request(GenerationSettings(temperature=0.0, repetition_penalty=1.0))
    assert (
        greedy["temperature"] == 0.0 and "top_p" not in greedy and "extra_body" not in greedy and "seed" not in greedy
    )


def test_context_from_the_model_list():
    assert context_of({"id": "a", "max_model_len": 32768}) == 32768  # vLLM
    assert context_of({"id": "a", "meta": {"n_ctx_train": 8192}}) == 8192  # llama.cpp's llama-server
    assert context_of({"id": "a"}) is None


def test_fit_drops_oldest_turns_keeps_system_and_last():
    msgs = [{"role": "system", "content": "S"}]
    for i in range(10):
        msgs += [{"role": "user", "content": f"q{i} " + "x" * 300}, {"role": "assistant", "content": "a" * 300}]
    msgs.append({"role": "user", "content": "last"})
    kept, dropped = fit_messages(msgs, 400)
    assert dropped > 0 and kept[0]["role"] == "system" and kept[-1]["content"] == "last"
    assert kept[1]["role"] == "user" and len(kept) == len(msgs) - dropped


def test_config_needs_a_url_and_hides_the_key():
    with pytest.raises(ConfigError, match="--base-url"):
        AppConfig(backend="openai")
    with pytest.raises(ConfigError, match="not a URL"):
        OpenAIOptions(base_url="localhost:8000")
    config = AppConfig(backend="openai", base_url="http://h:1/v1", api_key=KEY)
    assert KEY not in repr(config) and KEY not in repr(OpenAIOptions(base_url="http://h:1/v1", api_key=KEY))


def test_streams_with_settings_key_and_stats(fake):
    b = backend(fake.url, api_key=KEY)
    pieces = list(
        b.stream(ASK, GenerationSettings(temperature=0.7, seed=3, max_new_tokens=20), system_prompt="Be brief.")
    )
    texts = [p.text for p in pieces if not p.done]
    assert len(texts) == 5 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert pieces[-1].done and pieces[-1].stats.new_tokens == 5 and pieces[-1].text == "w0 w1 w2 w3 w4 "
    sent = fake.requests[-1]
    assert sent["model"] == "base-model" and sent["stream"] is True and sent["seed"] == 3 and sent["max_tokens"] == 20
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["top_k"] == 50
    assert sent["auth"] == f"Bearer {KEY}"
    assert b.context_length == 4096 and "base-model" in b.label and KEY not in b.label


def test_stop_closes_the_stream_at_once(fake):
    fake.mode = "long"
    stop = threading.Event()
    got = []
    for piece in backend(fake.url).stream(ASK, GREEDY, stop=stop):
        got.append(piece)
        if len(got) == 3:
            stop.set()
    assert got[-1].done and got[-1].stats.stopped and len(got) <= 6
    assert fake.closed_early.wait(3), "the server kept writing: the HTTP stream was not closed"


def test_closing_the_generator_closes_the_stream(fake):
    fake.mode = "long"
    gen = backend(fake.url).stream(ASK, GREEDY)
    next(gen), next(gen)
    gen.close()
    assert fake.closed_early.wait(3)


def test_server_down_is_reported_fast():
    start = time.perf_counter()
    with pytest.raises(ChatError, match=r"Cannot reach the chat server at http://127\.0\.0\.1:9/v1"):
        reply(backend("http://127.0.0.1:9/v1", model="m"))
    assert time.perf_counter() - start < 3
    assert "not reachable" in backend("http://127.0.0.1:9/v1").label  # the app still starts


def test_wrong_key_says_how_to_set_it_never_shows_it(fake):
    fake.mode = "401"
    with pytest.raises(ChatError, match="DEMOFORGE_API_KEY") as err:
        reply(backend(fake.url, api_key=KEY))
    assert KEY not in str(err.value) and "--api-key" in str(err.value)


def test_unknown_model_lists_the_served_ones(fake):
    with pytest.raises(ChatError, match=r"does not serve model 'nope'. It serves: base-model"):
        reply(backend(fake.url, model="nope"))
    with pytest.raises(ChatError, match="(?i)it serves: base-model"):
        backend(fake.url).choose_model("nope")


def test_context_error_is_explained(fake):
    fake.mode = "context"
    with pytest.raises(ChatError, match="too long for the served model.*maximum context length"):
        reply(backend(fake.url))


def test_timeout_is_reported_within_the_read_timeout(fake):
    fake.mode = "hang"
    start = time.perf_counter()
    with pytest.raises(ChatError, match="did not answer in time"):
        reply(backend(fake.url, read_timeout_s=1.0))
    assert time.perf_counter() - start < 3


def test_stream_cut_mid_reply_keeps_the_text_and_says_so(fake):
    fake.mode = "cut"
    seen = []
    with pytest.raises(ChatError, match="closed the stream after"):
        for piece in backend(fake.url).stream(ASK, GREEDY):
            seen.append(piece.text)
    assert seen[-1] == "w0 w1 w2 "


def test_wrong_path_says_to_give_the_api_root(fake):
    with pytest.raises(ChatError, match="ending in /v1"):
        backend(fake.url.removesuffix("/v1") + "/nothing").served_models()


def _fake_adapter(home: Path, name: str) -> Path:
    folder = home / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_card.json").write_text(json.dumps({"name": name, "task": "sft", "base_model": "default"}))
    return folder


def test_adapter_selects_the_served_name(fake, tmp_path):
    _fake_adapter(tmp_path, "support-bot")
    fake.models.append({"id": "support-bot", "object": "model"})
    b = OpenAIBackend(OpenAIOptions(base_url=fake.url), home=tmp_path)
    reply(b, adapter="support-bot")
    assert fake.requests[-1]["model"] == "support-bot"


def test_adapter_loaded_at_run_time_where_the_server_can(fake, tmp_path):
    folder = _fake_adapter(tmp_path, "bot")
    fake.lora_status = 200
    b = OpenAIBackend(OpenAIOptions(base_url=fake.url), home=tmp_path)
    b.switch_adapter("bot")
    load = [r for r in fake.requests if r["path"] == "/v1/load_lora_adapter"]
    assert load == [
        {"path": "/v1/load_lora_adapter", "auth": "Bearer none", "lora_name": "bot", "lora_path": str(folder)}
    ]
    reply(b, adapter="bot")
    assert fake.requests[-1]["model"] == "bot"


def test_adapter_not_served_names_the_command(fake, tmp_path):
    _fake_adapter(tmp_path, "bot")
    b = OpenAIBackend(OpenAIOptions(base_url=fake.url), home=tmp_path)
    with pytest.raises(AdapterError, match=r"does not serve adapter 'bot'.*vllm serve .*--lora-modules bot="):
        b.switch_adapter("bot")
    tries = len([r for r in fake.requests if r["path"] == "/v1/load_lora_adapter"])
    with pytest.raises(AdapterError):
        b.switch_adapter("bot")
    assert tries == 1 and len([r for r in fake.requests if r["path"] == "/v1/load_lora_adapter"]) == 1  # remembered


def test_serve_commands_give_the_demoforge_line_for_each_server(tmp_path):
    from core.serve_recipes import serve_commands

    _fake_adapter(tmp_path, "bot")
    text = serve_commands("bot", tmp_path)
    app = "python app.py --backend openai --base-url http://127.0.0.1:{}/v1 --served-model {}"
    assert app.format(8000, "HuggingFaceTB/SmolLM2-135M-Instruct") in text  # vLLM: the base; the adapter by name
    assert app.format(8080, "bot") in text  # llama.cpp server: --alias bot
    assert app.format(11434, "bot") in text  # Ollama's OpenAI endpoint
    assert str(tmp_path) not in text


def test_app_flags_build_the_remote_config(monkeypatch):
    import app

    monkeypatch.setenv("DEMOFORGE_API_KEY", KEY)
    flags = ["--backend", "openai", "--base-url", "http://h:8000/v1", "--served-model", "m", "--context-length", "4096"]
    config = app.config_from_args(app.parse_args(flags))
    assert config.context_length == 4096
    assert (config.backend, config.base_url, config.served_model, config.api_key) == (
        "openai",
        "http://h:8000/v1",
        "m",
        KEY,
    )
    assert (
        app.config_from_args(
            app.parse_args(["--backend", "openai", "--base-url", "https://h/v1", "--api-key", "k"])
        ).api_key
        == "k"
    )
    monkeypatch.delenv("DEMOFORGE_API_KEY")
    with pytest.raises(ConfigError, match="needs --base-url"):
        app.config_from_args(app.parse_args(["--backend", "openai"]))
    with pytest.raises(ConfigError, match="got 'localhost:8000'"):
        app.config_from_args(app.parse_args(["--backend", "openai", "--base-url", "localhost:8000"]))


def test_served_picker_only_for_a_remote_backend(fake):
    from types import SimpleNamespace

    from demo.chat.served import remote

    assert remote(SimpleNamespace(backend=object())) is None  # local engines: no picker
    b = backend(fake.url)
    assert remote(SimpleNamespace(backend=b)) is b


def test_long_history_is_trimmed_with_a_notice(fake):
    fake.models = [{"id": "base-model", "object": "model"}]  # states no context: the configured one applies
    b = backend(fake.url, context_length=300)
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"q{i} " + "x" * 200}, {"role": "assistant", "content": "y" * 200}]
    history.append({"role": "user", "content": "last question"})
    pieces = list(b.stream(history, GREEDY))
    assert "oldest" in pieces[0].notice and "estimated" in pieces[0].notice and pieces[-1].done
    sent = fake.requests[-1]["messages"]
    assert sent[-1]["content"] == "last question" and len(sent) < len(history) and sent[0]["role"] == "user"
    with pytest.raises(ChatError, match="leaves no room"):
        list(b.stream(ASK, GenerationSettings(max_new_tokens=296)))
