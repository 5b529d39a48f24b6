"""One web server for both roles: the audience app and the builder app mounted on one FastAPI app, each with its
own sign-in, plus a throttle on failed sign-ins per client.

Audience mode (``--share``, a Space, or ``--mode audience``): the audience app at ``/`` (password ``DEMOFORGE_AUTH``,
if set) and the builder app at ``/builder`` behind ``DEMOFORGE_BUILDER_AUTH``; without builder credentials the
builder app is not served at all. Builder mode (a laptop): the builder app at ``/``, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount

from core import store, zerogpu
from core.arena import VoteStore
from core.auth import LoginThrottle
from core.config import AppConfig, ConfigError
from demo import build_app, launch_options
from demo.audience import accent_css, build_audience_app
from demo.presenter import add_presenter_panel

log = logging.getLogger("demoforge")
BUILDER_PATH = "/builder"
AUDIENCE_PATH = "/audience"
"""Where builder mode serves the audience app when ``--mcp`` asks for its MCP server (audience mode has it at /)."""
MCP_SUBPATH = "/gradio_api/mcp/"
MCP_WITH_PASSWORD = (
    "--mcp cannot be combined with a password on the demo (--auth or DEMOFORGE_AUTH): MCP clients cannot sign in "
    "through the login page, so every tool call would be refused. Serve the MCP tools without a password (drop "
    "--auth), or the password without --mcp."
)


def build_builder_app(engine: Any, config: AppConfig, votes: VoteStore) -> gr.Blocks:
    """Today's full app plus the presenter panel (arena results, save as profile)."""
    app = build_app(engine, config)
    add_presenter_panel(app, engine, config.profile, votes)
    return app


def _client(request: Request) -> str:
    # On a Space the proxy in front sets X-Forwarded-For; elsewhere a client could forge it, so it is ignored.
    forwarded = request.headers.get("x-forwarded-for") if os.environ.get("SPACE_ID") else None
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.client.host if request.client else "unknown"


def add_login_throttle(app: FastAPI, throttle: LoginThrottle) -> None:
    """Refuse sign-in attempts from a client that failed too often (429 with the wait), and count outcomes."""

    @app.middleware("http")
    async def throttle_logins(request: Request, call_next: Any) -> Response:
        if request.method != "POST" or not request.url.path.rstrip("/").endswith("/login"):
            return await call_next(request)
        client = _client(request)
        wait = throttle.wait_s(client)
        if wait > 0:
            await request.body()  # drain it: answering before reading resets a keep-alive connection
            return JSONResponse(
                {"detail": throttle.message(wait)}, status_code=429, headers={"Retry-After": str(round(wait) + 1)}
            )
        response = await call_next(request)
        ok = response.status_code < 400
        throttle.record(client, ok)
        if not ok:
            await asyncio.sleep(0.2)  # a fixed cost per failure on top of the growing wait
        return response


# Every route that runs an event by name: /call/v2 and /api too (the guard missed those two at first).
_API_CALL = re.compile(r"^(?P<prefix>/builder|/audience)?/gradio_api/(?:call/v2|call|run|api)/(?P<name>[^/]+)/?$")
_QUEUE_JOIN = re.compile(r"^(?P<prefix>/builder|/audience)?/gradio_api/queue/join/?$")
# Routes that bring data in besides an event's body: uploads, recordings, and streamed inputs (which replace a
# queued event's data after the guard has read it). A text-only app has no use for any of them.
_DATA_ROUTE = re.compile(
    r"^(?P<prefix>/builder|/audience)?/gradio_api/(?:upload|process_recording|stream/[^/]+(?:/close)?)/?$"
)
# Gradio routes without its sign-in check: cancel, and the streamed-input routes (which replace a queued event's
# data, after the guard has read it).
# Gradio's file route (``file=<path or URL>`` and ``file/<path>``): it serves anything in the upload cache, which
# every app of the process shares, and fetches public URLs.
_FILE_ROUTE = re.compile(r"^(?P<prefix>/builder|/audience)?/gradio_api/file(?:=|/)(?P<target>.+)$")
_OPEN_ROUTE = re.compile(r"^(?P<prefix>/builder|/audience)?/gradio_api/(?:cancel|stream/[^/]+(?:/close)?)/?$")
TEXT_ONLY = "This demo takes text only: no files, links to files or embedded components."
NOT_ON_PAGE = "This demo serves only the files its own page shows."
SMALL_BODY = 1 << 20
"""Bytes of a refused request's body read before answering (more is not read: the connection is closed)."""
UNKNOWN_ACTION = (
    "This app has no action {name!r}. Only the demo's builder can use the builder's actions: sign in as builder "
    "(at /builder)."
)


async def _refuse(request: Request, status: int, detail: str) -> JSONResponse:
    """Answer ``detail``. A small body is read first (answering before reading resets a keep-alive connection); a
    large one is not read into memory at all: the answer closes the connection instead."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) <= SMALL_BODY:
        await request.body()
        return JSONResponse({"detail": detail}, status_code=status)
    return JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})


def _beyond_text(body: bytes) -> bool:
    """Whether a call's JSON body holds anything but text for a text-only app: a Gradio file reference (``meta``
    ``_type`` FileData), a ``path`` or ``url`` (Gradio fetches or copies those), or a chat message's embedded
    ``component`` (the Chatbot builds and preprocesses it: an Image or Audio opened any server path). Parsed as
    Gradio parses it (so ``\\u`` escapes or UTF-16 do not hide a key); a body that does not parse counts too.
    A message that merely mentions these words is text."""
    try:
        stack: list[Any] = [json.loads(body or b"{}")]
    except (ValueError, RecursionError):
        return True
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if {"path", "url", "component"} & item.keys():
                return True
            meta = item.get("meta")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _page_files(blocks: gr.Blocks) -> set[str]:
    """The files an app's own page shows: the ``path`` of every file value in its components' props (a logo, an
    avatar). Examples and API documentation are left out: they only describe what a component could take."""
    found: set[str] = set()
    for component in (blocks.config or {}).get("components", []):
        stack: list[Any] = [component.get("props") or {}]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if isinstance(item.get("path"), str) and ("meta" in item or "orig_name" in item):
                    found.add(_file_key(item["path"]))
                stack.extend(v for k, v in item.items() if k not in ("examples", "example_inputs"))
            elif isinstance(item, list):
                stack.extend(item)
    return found


def _file_key(target: str) -> str:
    """A file route's target as Gradio reads it: URLs as they are, paths made absolute (``..`` resolved)."""
    return target if target.startswith(("http://", "https://")) else os.path.abspath(target)


def add_endpoint_guard(app: FastAPI, mounted: dict[str, gr.Blocks], fileless: frozenset[str] = frozenset()) -> None:
    """Answer a call to an api_name or fn_index that a mounted app lacks with a 404 in words (Gradio answers a bare
    500, or drops the connection).

    ``mounted`` maps a mount prefix ('' for /, '/builder', '/audience') to the Blocks mounted there. The apps at
    ``fileless`` prefixes (the audience's: text only) refuse uploads, the streamed-input routes and any call that
    carries more than text (:func:`_beyond_text`), so a visitor can neither fill the server's disk through
    Gradio's upload route nor hand a handler a file, a URL to fetch or a component to build. Their file route
    serves only the files their own page shows: Gradio's upload cache is one per process, so it otherwise served
    the builder's uploaded datasets to anyone who had their path, and it fetched any public URL for a visitor.
    """
    names = {prefix: {fn.api_name for fn in b.fns.values() if fn.api_name} for prefix, b in mounted.items()}
    indices = {prefix: set(b.fns) for prefix, b in mounted.items()}
    page_files: dict[str, set[str]] = {}  # per fileless prefix, read from the config at the first file request

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        # The decoded path Starlette routes on (request.url.path re-escapes '?', '#' and '\\').
        path = request.scope["path"]
        if request.method in ("GET", "HEAD"):
            file_route = _FILE_ROUTE.match(path)
            prefix = (file_route.group("prefix") or "") if file_route else None
            if file_route and prefix in fileless and prefix in mounted:
                if prefix not in page_files:
                    page_files[prefix] = _page_files(mounted[prefix])
                if _file_key(file_route.group("target")) not in page_files[prefix]:
                    return JSONResponse({"detail": NOT_ON_PAGE}, status_code=403)
            return await call_next(request)
        if request.method != "POST":
            return await call_next(request)
        unknown: str | None = None
        data_route = _DATA_ROUTE.match(path)
        api_call = _API_CALL.match(path)
        call = api_call or _QUEUE_JOIN.match(path)
        if data_route and (data_route.group("prefix") or "") in fileless:
            return await _refuse(request, 400, TEXT_ONLY)
        if call and (call.group("prefix") or "") in fileless and _beyond_text(await request.body()):
            return JSONResponse({"detail": TEXT_ONLY}, status_code=400)
        if api_call and api_call.group("name") != "predict":
            if api_call.group("name") not in names.get(api_call.group("prefix") or "", set()):
                unknown = api_call.group("name")
        # /run/predict is how the page runs its unqueued events (Stop, Undo, unlocking Send): by fn_index, as a join.
        elif match := (api_call or _QUEUE_JOIN.match(path)):
            try:
                index = json.loads(await request.body() or b"{}").get("fn_index")
            except (ValueError, AttributeError):
                index = None
            if index is not None and index not in indices.get(match.group("prefix") or "", set()):
                unknown = f"#{index}"
        if unknown is None:
            return await call_next(request)
        return await _refuse(request, 404, UNKNOWN_ACTION.format(name=unknown))


def builder_output_dirs(engine: Any) -> list[str]:
    """Where the builder's handlers write the files they return (scratch outputs, run cards, GGUF exports): the
    folders Gradio may copy a returned file from, besides its own cache, the working directory and the system temp
    dir, which it always allows (see :func:`mount`)."""
    home = Path(getattr(engine, "home", None) or store.home())
    return [str(home / "tmp"), str(home / "adapters"), str(home / "exports")]


def mount(app: FastAPI, blocks: gr.Blocks, path: str, **kwargs: Any) -> None:
    """``gr.mount_gradio_app`` with Gradio's check of the file paths a request carries turned on (only files
    uploaded to its cache may come in).

    Gradio runs that check only once ``has_launched`` is set, which ``launch()`` does and ``mount_gradio_app``
    (used here, to serve two apps on one server) does not. Without it a visitor could put any server path in a
    chat message's file part: ``/etc/passwd`` was copied into the served cache, and ``/dev/zero`` was hashed on
    the event loop, freezing the whole server, builder included, until it was killed."""
    gr.mount_gradio_app(app, blocks, path, **kwargs)
    blocks.has_launched = True


def require_sign_in_on_open_routes(app: FastAPI) -> None:
    """Refuse Gradio's cancel and streamed-input routes on a password-protected app to a request without that app's
    sign-in.

    Those are the routes of a mounted app without Gradio's sign-in check: ``/builder/gradio_api/cancel`` answered
    200 to anyone. Using them on a real event still needs its random ids, but a route behind a password should not
    answer strangers. Reads the mounted Gradio app's own token table (after mounting)."""
    mounts = {route.path: route.app for route in app.routes if isinstance(route, Mount)}

    @app.middleware("http")
    async def open_route_guard(request: Request, call_next: Any) -> Response:
        match = _OPEN_ROUTE.match(request.url.path) if request.method == "POST" else None
        gapp = mounts.get(match.group("prefix") or "") if match else None
        if gapp is not None and getattr(gapp, "auth", None):
            cid = gapp.cookie_id
            token = request.cookies.get(f"access-token-{cid}") or request.cookies.get(f"access-token-unsecure-{cid}")
            if gapp.tokens.get(token) is None:
                return await _refuse(request, 401, "Not authenticated: sign in first.")
        return await call_next(request)


@dataclass
class Served:
    """What :func:`build_server` made: the FastAPI app and the Blocks mounted on it."""

    app: FastAPI
    audience: gr.Blocks | None
    builder: gr.Blocks | None
    builder_path: str | None
    mcp_url_path: str | None = None
    """Path of the MCP server (streamable HTTP) when one is served, e.g. '/gradio_api/mcp/'."""


def build_server(
    engine: Any,
    config: AppConfig,
    votes: VoteStore | None = None,
    throttle: LoginThrottle | None = None,
    mcp: bool = False,
) -> Served:
    """Mount the apps for ``config``'s mode on one FastAPI app, with the login throttle (default settings unless
    ``throttle`` is given).

    With ``mcp``, Gradio's MCP server runs on the audience app only (at / in audience mode, at /audience in builder
    mode), whose only public endpoints are then chat and classify; the builder app never gets one (``mcp_server``
    is passed as False, so GRADIO_MCP_SERVER=true in the environment cannot turn it on either).
    """
    if mcp and config.auth is not None:
        # Measured: Gradio lists the tools to anyone, and each call fails on its own loopback sign-in.
        raise ConfigError(MCP_WITH_PASSWORD)
    engine = zerogpu.on_gpu(engine)  # on a ZeroGPU Space every model call borrows the GPU; elsewhere unchanged
    profile = config.profile
    votes = votes or VoteStore(retention_days=profile.retention_days)
    opts = launch_options(config)
    common: dict[str, Any] = {
        "ssr_mode": False,
        "show_error": False,
        "max_file_size": opts["max_file_size"],
        "theme": opts["theme"],
        "css_paths": opts["css_paths"],
        "css": accent_css(profile),
        "auth_message": f"<h2>{profile.title}</h2>Sign in to see the demo.",
    }
    app = FastAPI()
    add_login_throttle(app, throttle or LoginThrottle())
    if not config.audience_default:
        builder = build_builder_app(engine, config, votes)
        mounted = {"": builder}
        mcp_path = None
        if mcp:  # the builder's own endpoints never become tools: the audience app carries the MCP server
            audience = build_audience_app(engine, config, votes, mcp=True)
            mount(app, audience, AUDIENCE_PATH, auth=config.auth, run_history=False, mcp_server=True, **common)
            mounted[AUDIENCE_PATH] = audience
            mcp_path = AUDIENCE_PATH + MCP_SUBPATH
        outputs = builder_output_dirs(engine)
        mount(app, builder, "/", auth=config.auth, mcp_server=False, allowed_paths=outputs, **common)
        add_endpoint_guard(app, mounted, frozenset({AUDIENCE_PATH}))
        require_sign_in_on_open_routes(app)
        return Served(app, mounted.get(AUDIENCE_PATH), builder, "/", mcp_path)
    audience = build_audience_app(engine, config, votes, mcp=mcp)
    builder = None
    if config.builder_auth is not None:
        builder = build_builder_app(engine, config, votes)
        builder_common = {**common, "auth_message": f"<h2>{profile.title}</h2>Builder sign-in."}
        mount(
            app,
            builder,
            BUILDER_PATH,
            auth=config.builder_auth,
            mcp_server=False,
            allowed_paths=builder_output_dirs(engine),
            **builder_common,
        )
    else:
        log.info("Audience mode without DEMOFORGE_BUILDER_AUTH: the builder app is not served.")
    # Mounted last: "/" would otherwise catch /builder too.
    # No run history for visitors: the data notice promises conversations are not kept, in the browser either.
    mount(app, audience, "/", auth=config.auth, run_history=False, mcp_server=mcp, **common)
    add_endpoint_guard(app, {"": audience, **({BUILDER_PATH: builder} if builder else {})}, frozenset({""}))
    require_sign_in_on_open_routes(app)
    return Served(app, audience, builder, BUILDER_PATH if builder else None, MCP_SUBPATH if mcp else None)


def pin_mcp_loopback(served: Served, url: str) -> None:
    """Point the MCP server's tool calls at this server (``url``, then the audience app's mount).

    Gradio's MCP server runs each tool call through an HTTP client back into the app. ``launch()`` gives it the local
    address; a mounted app has none, so Gradio took the address from the first MCP request's ``X-Forwarded-Host``
    or ``X-Gradio-Server`` header and kept it for everyone: a visitor could send everyone's tool calls elsewhere."""
    server_obj = getattr(served.audience, "mcp_server_obj", None) if served.mcp_url_path else None
    if server_obj is not None:
        server_obj._local_url = url + served.mcp_url_path.removesuffix(MCP_SUBPATH) + "/"


SHUTDOWN_S = 3
"""Seconds a stop waits for running requests (streams of open pages) before cancelling them."""


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps its own (Ctrl+C)
        pass


@contextmanager
def running(served: Served, host: str, port: int) -> Iterator[str]:
    """Serve ``served`` on host:port in a thread; yields the base URL; stops on exit."""
    # A bounded graceful shutdown: an open page keeps an event stream running, and uvicorn waits for running
    # requests before the lifespan's shutdown, where Gradio sweeps its temp files (delete_cache). Unbounded, a
    # stop with a browser tab open never got there: the process ended with the uploads and downloads left behind.
    config = uvicorn.Config(
        served.app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=SHUTDOWN_S
    )
    server = _Server(config)
    thread = threading.Thread(target=server.run, name="demoforge-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"The web server did not start on {host}:{port} (is the port taken?).")
        time.sleep(0.05)
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    pin_mcp_loopback(served, url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=SHUTDOWN_S + 10)
        for blocks in (served.audience, served.builder):
            if blocks is not None:
                blocks.close()


def serve_forever(engine: Any, config: AppConfig, mcp: bool = False) -> None:
    """The app.py launch path: build, serve, print where, open a share tunnel when asked, block until Ctrl+C."""
    served = build_server(engine, config, mcp=mcp)
    zerogpu.startup()  # on a ZeroGPU Space: pack the loaded weights for the GPU workers, as launch() would
    with running(served, config.host, config.port) as url:
        mode = "audience" if served.builder_path != "/" else "builder"
        print(f"DemoForge ({mode} mode) at {url}/", flush=True)
        if served.mcp_url_path:
            print(f"MCP server (streamable HTTP; tools: chat, classify): {url}{served.mcp_url_path}", flush=True)
        if served.builder_path != "/":
            where = f"{url}{BUILDER_PATH}/" if served.builder else "not served (set DEMOFORGE_BUILDER_AUTH)"
            print(f"Builder: {where}", flush=True)
        if config.share:
            from gradio import networking

            blocks = served.audience or served.builder
            try:
                share = networking.setup_tunnel(config.host, config.port, blocks.share_token, None, None)
                print(f"Public share link ({mode} view): {share}", flush=True)
            except Exception as exc:  # noqa: BLE001 - offline or the share server refused: keep serving locally
                print(f"No share link ({exc}); the app keeps serving at {url}/", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("Stopping.", flush=True)
