"""``--mcp``: Gradio's MCP server on the audience app, with the `mcp` Python client over streamable HTTP.

The tools must be exactly the audience-safe ones (chat, classify), with their arguments described; the builder's
endpoints (training, rename, delete, merge, push) must be neither listed nor callable as tools, in audience mode
(audience at /, builder at /builder) and in builder mode (builder at /, the audience app and its MCP server at
/audience). Classify runs zero-shot on the embedded MiniLM; chat on the embedded SmolLM2, 16 new tokens.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from core.config import AppConfig, ConfigError, DemoProfile
from core.engine import Engine
from demo.server import AUDIENCE_PATH, MCP_SUBPATH, build_server, running
from tests.helpers import free_port, isolated_home

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

BUILDER = ("boss", "boss-pw")
LABELS = ["sports", "cooking", "finance", "weather"]
# Builder endpoints that must never be tools (a sample; the exact-set check below covers the rest).
BUILDER_ONLY = {"start_training", "stop_training", "delete_adapter", "rename_adapter", "push_adapter", "merge_adapter"}


def _profile() -> DemoProfile:
    return DemoProfile(
        title="MCP demo",
        tabs=["chat", "classify"],
        classify_labels=LABELS,
        classify_method="embedding",
        max_new_tokens=16,
        temperature=0.0,
    )


def _mcp(url: str, work: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """Open an MCP session on ``url`` (streamable HTTP), initialise it, run ``work`` on it."""

    async def go() -> Any:
        async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)

    return asyncio.run(go())


def _text(result: Any) -> str:
    assert not result.isError, result.content
    return "".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture(scope="module")
def audience_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with isolated_home(tmp_path_factory.mktemp("mcp-home")):
        config = AppConfig(mode="audience", builder_auth=BUILDER, profile=_profile())
        served = build_server(Engine(config), config, mcp=True)
        with running(served, "127.0.0.1", free_port()) as url:
            yield {"url": url, "served": served}


def test_mcp_lists_exactly_the_audience_safe_tools_with_described_arguments(audience_mode: dict) -> None:
    assert audience_mode["served"].mcp_url_path == MCP_SUBPATH == "/gradio_api/mcp/"
    tools = _mcp(audience_mode["url"] + MCP_SUBPATH, lambda s: s.list_tools())
    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == {"chat", "classify"}, set(by_name)
    assert not BUILDER_ONLY & set(by_name)
    chat, classify = by_name["chat"], by_name["classify"]
    assert "question" in chat.description
    assert set(chat.inputSchema["properties"]) == {"message", "adapter"}
    assert "plain text" in chat.inputSchema["properties"]["message"]["description"]
    assert set(classify.inputSchema["properties"]) == {"text"}
    assert "text to classify" in classify.inputSchema["properties"]["text"]["description"]
    assert all(label in classify.description for label in LABELS), classify.description  # the profile's labels


def test_the_builder_app_has_no_mcp_server(audience_mode: dict) -> None:
    # The builder's endpoints stay callable only through the builder's sign-in, and never as MCP tools.
    builder = audience_mode["served"].builder
    assert builder is not None and not builder.mcp_server
    with httpx.Client(base_url=audience_mode["url"], timeout=30) as http:
        assert http.post("/builder/login", data={"username": BUILDER[0], "password": BUILDER[1]}).status_code == 200
        r = http.post(
            "/builder" + MCP_SUBPATH,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream"},
        )
    assert r.status_code >= 400, r.text[:300]


def test_mcp_classify_zero_shot_on_minilm(audience_mode: dict) -> None:
    async def call(session: ClientSession) -> Any:
        return await session.call_tool("classify", {"text": "The goalkeeper saved a penalty in extra time."})

    # Gradio's MCP server sends a Label's value as the text of a dict: the top label, then every confidence.
    result = ast.literal_eval(_text(_mcp(audience_mode["url"] + MCP_SUBPATH, call)))
    assert result["label"] == "sports", result
    assert {c["label"] for c in result["confidences"]} == set(LABELS)


def test_mcp_chat_answers_with_smollm2(audience_mode: dict) -> None:
    async def call(session: ClientSession) -> Any:
        return await session.call_tool("chat", {"message": "What is the capital of France?"})

    text = _text(_mcp(audience_mode["url"] + MCP_SUBPATH, call))
    assert "Paris" in text, text


def test_a_forged_host_header_cannot_redirect_the_tool_calls(tmp_path: Path) -> None:
    """Gradio's MCP server calls the app back over HTTP; a mounted app gave it no address, so it took the first MCP
    request's X-Forwarded-Host and kept it for every caller. The address is now this server's own."""
    with isolated_home(tmp_path):
        config = AppConfig(mode="audience", profile=_profile())
        served = build_server(Engine(config), config, mcp=True)
        with running(served, "127.0.0.1", free_port()) as url:
            assert served.audience.mcp_server_obj.local_url == url + "/"

            async def go() -> Any:
                forged = httpx.AsyncClient(headers={"x-forwarded-host": "forged.invalid"}, timeout=60)
                async with (
                    forged,
                    streamable_http_client(url + MCP_SUBPATH, http_client=forged) as (read, write, _),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    return await session.call_tool("classify", {"text": "The goalkeeper saved a penalty."})

            assert "sports" in _text(asyncio.run(go()))  # answered here, not sent to forged.invalid


def test_mcp_refuses_a_builder_endpoint_as_a_tool(audience_mode: dict) -> None:
    async def call(session: ClientSession) -> Any:
        return await session.call_tool("respond", {"message": "hi"})  # undocumented: the page's, not a tool

    result = _mcp(audience_mode["url"] + MCP_SUBPATH, call)
    assert result.isError
    assert "Unknown tool" in "".join(getattr(b, "text", "") for b in result.content)


def test_mcp_with_a_demo_password_is_refused_in_words(tmp_path: Path) -> None:
    # MCP clients cannot pass Gradio's login page: the tools would be listed to anyone and every call refused.
    with isolated_home(tmp_path):
        config = AppConfig(mode="audience", auth=("guest", "pw"), profile=_profile())
        with pytest.raises(ConfigError, match="--mcp cannot be combined with a password on the demo"):
            build_server(Engine(config), config, mcp=True)


def test_builder_mode_serves_mcp_from_the_audience_app_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    with isolated_home(tmp_path_factory.mktemp("mcp-builder-home")):
        config = AppConfig(mode="builder", profile=_profile())
        served = build_server(Engine(config), config, mcp=True)
        assert served.mcp_url_path == AUDIENCE_PATH + MCP_SUBPATH
        with running(served, "127.0.0.1", free_port()) as url:
            assert served.audience.mcp_server_obj.local_url == url + AUDIENCE_PATH + "/"
            tools = _mcp(url + served.mcp_url_path, lambda s: s.list_tools())
            assert {t.name for t in tools.tools} == {"chat", "classify"}
            with httpx.Client(base_url=url, timeout=30) as http:  # the builder at / has none
                r = http.post(MCP_SUBPATH, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert r.status_code >= 400, r.text[:300]


def test_app_py_mcp_flag_serves_the_tools(tmp_path: Path) -> None:
    """`python app.py --mcp` as a user starts it: the printed MCP URL answers with the two tools."""
    profile = tmp_path / "mcp.yaml"
    profile.write_text(yaml.safe_dump(_profile().to_dict()), encoding="utf-8")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SPACE_ID", None)
    cmd = [sys.executable, "app.py", "--mcp", "--mode", "audience", "--port", str(port), "--profile", str(profile)]
    (tmp_path / "home").mkdir()
    with isolated_home(tmp_path / "home"):
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "DEMOFORGE_HOME": os.environ["DEMOFORGE_HOME"]},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline, lines, mcp_url = time.monotonic() + 240, [], None
        while mcp_url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("MCP server"):
                mcp_url = line.rsplit(" ", 1)[-1].strip()
        assert mcp_url == f"http://127.0.0.1:{port}{MCP_SUBPATH}", "".join(lines)[-3000:]
        tools = _mcp(mcp_url, lambda s: s.list_tools())
        assert {t.name for t in tools.tools} == {"chat", "classify"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
