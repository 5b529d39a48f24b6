"""The role boundary through a real server: audience at /, builder at /builder, each with its own sign-in.

Every builder endpoint is called from an audience session, through gradio_client and raw HTTP, and must be refused;
the audience's own endpoints stay inside the profile; failed sign-ins are throttled. Tiny Llama: seconds, not minutes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from core.arena import VoteStore
from core.auth import LoginThrottle
from core.config import AppConfig, DemoProfile
from core.engine import Engine
from demo.server import build_server, running
from tests.fakes import FakeOpenAIServer
from tests.helpers import free_port, isolated_home

pytestmark = pytest.mark.ui

AUDIENCE = ("guest", "guest-pw")
BUILDER = ("boss", "boss-pw")
# What an audience may call: nothing else may exist on the audience app.
AUDIENCE_ENDPOINTS = {
    "respond",
    "accept",  # the page's Enter in two steps (private: the page calls them by position); answer as respond does
    "answer",
    "unanswered",
    "chat",
    "load_example",
    "classify",
    "arena_ask",
    "vote_a",
    "vote_b",
    "vote_tie",
    "vote_both_bad",
}
AUDIENCE_MODULES = {"demo.audience", "demo.arena_tab", "demo.errors", "gradio.helpers"}  # helpers: gr.Examples


def make_chat_adapter(folder: Path, base: Path, seed: int) -> None:
    """A small random LoRA on the tiny Llama, saved like core.train saves one (weights + card)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    card = {"name": folder.name, "task": "sft", "base_model": str(base), "created": f"2026-01-0{seed}T00:00:00+00:00"}
    (folder / "adapter_card.json").write_text(json.dumps(card), encoding="utf-8")


def audience_profile() -> DemoProfile:
    return DemoProfile(
        title="Acme roles demo",
        examples=["w1 w2 good"],
        audience_adapters=["tuned-a"],
        default_adapter="tuned-a",
        tabs=["chat", "classify"],
        classify_labels=["good", "bad"],
        classify_method="chat",
        max_new_tokens=24,
    )


def tiny_png(path: Path) -> Path:
    """A 2x2 PNG."""
    from PIL import Image

    Image.new("RGB", (2, 2), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def roles(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("roles-home")
    with isolated_home(home):
        base = tiny_models["llama"]
        for i, name in enumerate(["tuned-a", "tuned-b"], start=1):
            make_chat_adapter(home / "adapters" / name, base, i)
        profile = audience_profile()
        profile.logo = str(tiny_png(home / "logo.png"))  # a file the audience page itself shows
        config = AppConfig(model=str(base), auth=AUDIENCE, builder_auth=BUILDER, mode="audience", profile=profile)
        engine = Engine(config)
        votes = VoteStore(home / "arena.sqlite")
        # One deliberate wrong sign-in below must not lock the other tests (all from 127.0.0.1) out.
        served = build_server(engine, config, votes, LoginThrottle(base_delay_s=0.0, max_failures=100))
        with running(served, "127.0.0.1", free_port()) as url:
            yield {"url": url, "served": served, "votes": votes, "home": home}


def builder_endpoints(served) -> dict[str, int]:
    """api_name -> fn_index of every event of the builder app (documented or not)."""
    deps = served.builder.config["dependencies"]
    return {d["api_name"]: i for i, d in enumerate(deps) if d.get("api_name")}


def signed_in(url: str, auth: tuple[str, str], prefix: str = "") -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    r = http.post(f"{prefix}/login", data={"username": auth[0], "password": auth[1]})
    assert r.status_code == 200, r.text
    return http


def test_audience_app_holds_only_audience_handlers(roles: dict) -> None:
    fns = roles["served"].audience.fns.values()
    names = {fn.api_name for fn in fns if fn.api_name}
    assert names <= AUDIENCE_ENDPOINTS, names - AUDIENCE_ENDPOINTS
    modules = {fn.fn.__module__ for fn in fns if fn.fn is not None}
    assert modules <= AUDIENCE_MODULES, modules


def assert_builder_only(url: str, served, musts: tuple[str, ...]) -> None:
    """Every builder endpoint (``musts`` among them) is refused to an audience session, by name and by position,
    through gradio_client and raw HTTP, and the builder app needs the builder's own sign-in."""
    builder_only = {n: i for n, i in builder_endpoints(served).items() if n not in AUDIENCE_ENDPOINTS}
    for must in musts:
        assert any(must in n for n in builder_only), (must, sorted(builder_only))
    client = Client(url, auth=AUDIENCE, verbose=False)
    listed = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert not {f"/{n}" for n in builder_only} & listed
    http = signed_in(url, AUDIENCE)
    n_audience = len(served.audience.fns)
    for name, index in builder_only.items():
        with pytest.raises(ValueError, match="Cannot find"):
            client.submit(api_name=f"/{name}")
        for route in ("call", "call/v2", "api"):  # every route that runs an event by name
            r = http.post(f"/gradio_api/{route}/{name}", json={"data": []})
            assert r.status_code == 404, (route, name, r.status_code, r.text)
            assert "Only the demo's builder" in r.json()["detail"] and "sign in as builder" in r.json()["detail"]
        # By position too: the builder's fn_index means nothing (or an audience handler) on the audience app.
        join = http.post(
            "/gradio_api/queue/join", json={"data": [], "fn_index": index, "session_hash": "x1", "event_data": None}
        )
        predict = http.post(  # the route of unqueued events, also by position
            "/gradio_api/run/predict", json={"data": [], "fn_index": index, "session_hash": "x1", "event_data": None}
        )
        if index >= n_audience:
            assert join.status_code == 404 and "sign in as builder" in join.text, (name, join.text)
            assert predict.status_code == 404 and "sign in as builder" in predict.text, (name, predict.text)
    # The builder app itself needs the builder's credentials: the audience password does not open it.
    bad = httpx.post(f"{url}/builder/login", data={"username": AUDIENCE[0], "password": AUDIENCE[1]})
    assert bad.status_code == 400
    assert http.get("/builder/config").status_code == 401
    for name in builder_only:
        assert http.post(f"/builder/gradio_api/call/{name}", json={"data": []}).status_code == 401, name


def test_every_builder_endpoint_is_unreachable_from_an_audience_session(roles: dict) -> None:
    musts = ("delete_adapter", "push_adapter", "start_training", "rename_adapter", "merge_adapter")
    musts += ("publish_space", "download_run_card", "run_card")  # the Adapters tab's publish and run card
    assert_builder_only(roles["url"], roles["served"], musts)


def test_the_served_model_picker_of_a_remote_backend_is_builder_only(tmp_path: Path) -> None:
    """With --backend openai the builder's Chat tab lists and switches the server's models; an audience may not."""
    server = FakeOpenAIServer()
    server.models.append({"id": "tuned-model", "object": "model"})
    try:
        with isolated_home(tmp_path):
            config = AppConfig(
                backend="openai",
                base_url=server.url,
                auth=AUDIENCE,
                builder_auth=BUILDER,
                mode="audience",
                profile=DemoProfile(title="Remote roles demo"),
            )
            engine = Engine(config)
            served = build_server(
                engine, config, VoteStore(tmp_path / "arena.sqlite"), LoginThrottle(base_delay_s=0.0, max_failures=100)
            )
            with running(served, "127.0.0.1", free_port()) as url:
                assert_builder_only(url, served, ("served_models", "served_model"))
                builder = Client(f"{url}/builder/", auth=BUILDER, verbose=False)
                assert "tuned-model" in json.dumps(builder.predict(api_name="/served_models"))
                assert "tuned-model" in builder.predict("tuned-model", api_name="/served_model")
                audience = Client(url, auth=AUDIENCE, verbose=False)
                assert audience.predict("Hi", None, api_name="/chat")  # still chats, on the model it was given
                asked = [r["model"] for r in server.requests if r["path"] == "/v1/chat/completions"]
                assert asked == ["tuned-model"], asked
    finally:
        server.close()


def test_builder_signs_in_at_builder_and_reaches_builder_endpoints(roles: dict) -> None:
    client = Client(f"{roles['url']}/builder/", auth=BUILDER, verbose=False)
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/arena_results" in named and any("delete" in n for n in named)


def test_audience_chat_streams_with_the_profile_adapter(roles: dict) -> None:
    client = Client(roles["url"], auth=AUDIENCE, verbose=False)
    answer = client.predict("w1 w2 good", "tuned-a", api_name="/chat")
    assert isinstance(answer, str) and answer.strip()


def test_audience_may_not_switch_to_an_adapter_the_profile_does_not_name(roles: dict) -> None:
    client = Client(roles["url"], auth=AUDIENCE, verbose=False)
    for other in ("tuned-b", "base model", "../etc"):
        with pytest.raises(AppError, match="Only the demo's builder can switch .* sign in as builder"):
            client.predict("w1 good", other, api_name="/chat")


def test_audience_classify_uses_the_profile_labels(roles: dict) -> None:
    client = Client(roles["url"], auth=AUDIENCE, verbose=False)
    result = client.predict("the movie was good", api_name="/classify")
    assert {c["label"] for c in result["confidences"]} == {"good", "bad"}


def test_arena_round_vote_reveal_and_builder_results(roles: dict) -> None:
    client = Client(roles["url"], auth=AUDIENCE, verbose=False)
    with pytest.raises(AppError, match="no open round"):
        client.predict(api_name="/vote_a")
    before = roles["votes"].count()
    a, b, status = client.predict("w3 w4 good", api_name="/arena_ask")
    assert a.strip() and b.strip() and "Vote" in status
    reveal = client.predict(api_name="/vote_a")
    assert "A was **" in reveal and "B was **" in reveal
    assert {"base model", "tuned-a"} == {part.split("**")[0] for part in reveal.split("was **")[1:]}
    with pytest.raises(AppError, match="no open round"):  # one vote per round
        client.predict(api_name="/vote_b")
    assert roles["votes"].count() == before + 1
    builder = Client(f"{roles['url']}/builder/", auth=BUILDER, verbose=False)
    table = builder.predict(api_name="/arena_results")
    rows = table["data"]
    assert rows[0][0] == "base model vs tuned-a" and rows[0][1] >= 1
    # The export is written under the home's tmp/ (swept after an hour), never left in the system temp dir.
    before_tmp = {p.name for p in Path(tempfile.gettempdir()).iterdir()}
    exported = Path(builder.predict(api_name="/arena_export"))
    assert exported.read_text(encoding="utf-8").splitlines()[0].count(",") >= 3
    scratch = list((roles["home"] / "tmp").glob("votes-*/arena_votes.csv"))
    assert len(scratch) == 1 and scratch[0].read_text(encoding="utf-8") == exported.read_text(encoding="utf-8")
    assert not {p for p in Path(tempfile.gettempdir()).iterdir() if p.name not in before_tmp and "votes" in p.name}


def test_votes_survive_a_server_restart(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with isolated_home(tmp_path):
        make_chat_adapter(tmp_path / "adapters" / "tuned-a", tiny_models["llama"], 1)
        config = AppConfig(
            model=str(tiny_models["llama"]), builder_auth=BUILDER, mode="audience", profile=audience_profile()
        )
        engine = Engine(config)
        for expected in (2, 4):  # two votes per server life; the second life sees all four
            with running(build_server(engine, config), "127.0.0.1", free_port()) as url:
                client = Client(url, verbose=False)
                for verdict in ("/vote_a", "/vote_tie"):
                    client.predict("w1 good", api_name="/arena_ask")
                    client.predict(api_name=verdict)
                rows = Client(f"{url}/builder/", auth=BUILDER, verbose=False).predict(api_name="/arena_results")
                assert rows["data"][0][1] == expected
        assert VoteStore().count() == 4  # the home's arena.sqlite


def test_builder_mode_serves_the_builder_app_at_the_root(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with isolated_home(tmp_path):
        config = AppConfig(model=str(tiny_models["llama"]), mode="builder")
        served = build_server(Engine(config), config)
        assert served.audience is None and served.builder_path == "/"
        with running(served, "127.0.0.1", free_port()) as url:
            named = Client(url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
            assert "/arena_results" in named and "/save_profile" in named


def test_builder_saves_the_current_settings_as_a_profile(roles: dict) -> None:
    builder = Client(f"{roles['url']}/builder/", auth=BUILDER, verbose=False)
    args = ["Acme saved", "desc", "Be brief.", "w1 good\nw2 bad", ["tuned-b"], "tuned-b", ["chat"], "", True]
    msg = builder.predict("saved-demo", *args, "", 14, False, api_name="/save_profile")
    assert "saved-demo.yaml" in msg
    saved = DemoProfile.load("saved-demo")
    assert saved.audience_adapters == ["tuned-b"] and saved.default_adapter == "tuned-b"
    assert saved.examples == ["w1 good", "w2 bad"] and saved.retention_days == 14
    with pytest.raises(AppError, match="default_adapter='tuned-a' is not in audience_adapters"):
        builder.predict("bad", *args[:5], "tuned-a", *args[6:], "", 14, False, api_name="/save_profile")


def test_builder_makes_a_run_card_for_an_adapter(roles: dict) -> None:
    builder = Client(f"{roles['url']}/builder/", auth=BUILDER, verbose=False)
    path = builder.predict("tuned-a", api_name="/run_card")
    html = Path(path).read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and "tuned-a" in html and "<script" not in html
    audience = Client(roles["url"], auth=AUDIENCE, verbose=False)
    with pytest.raises(ValueError, match="Cannot find"):
        audience.submit("tuned-a", api_name="/run_card")


def test_failed_sign_ins_are_throttled_per_client(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with isolated_home(tmp_path):
        config = AppConfig(
            model=str(tiny_models["llama"]), auth=AUDIENCE, mode="audience", profile=DemoProfile(max_new_tokens=24)
        )
        # A long first back-off: the default (1 s, doubling) expired before the right password arrived when a
        # loaded CI machine took seconds for the 30 attempts, and the sign-in went through (seen once).
        throttle = LoginThrottle(base_delay_s=60.0)
        served = build_server(Engine(config), config, VoteStore(tmp_path / "v.sqlite"), throttle)
        with running(served, "127.0.0.1", free_port()) as url:
            page = httpx.get(f"{url}/config")
            assert page.status_code == 401
            codes = [
                httpx.post(f"{url}/login", data={"username": "guest", "password": f"wrong{i}"}).status_code
                for i in range(30)
            ]
            assert codes[0] == 400 and 429 in codes, codes
            assert codes.count(400) <= 5, codes  # later attempts are not even checked
            right = httpx.post(f"{url}/login", data={"username": AUDIENCE[0], "password": AUDIENCE[1]})
            assert right.status_code == 429 and "Too many failed sign-ins" in right.json()["detail"]
            # The login page carries the profile's title.
            assert "DemoForge" in json.dumps(httpx.get(f"{url}/config").json())


def test_share_or_space_makes_audience_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not AppConfig().audience_default
    assert AppConfig(share=True, auth=AUDIENCE).audience_default
    assert not AppConfig(share=True, auth=AUDIENCE, mode="builder").audience_default
    monkeypatch.setenv("SPACE_ID", "acme/demo")
    assert AppConfig().audience_default


def test_the_audience_sees_the_landing_adapters_run_card_as_about_this_model(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    with isolated_home(tmp_path):
        make_chat_adapter(tmp_path / "adapters" / "tuned-a", tiny_models["llama"], 1)
        card = "<!doctype html><h1>tuned-a</h1><p>held-out: w1 -> r1</p>"
        (tmp_path / "adapters" / "tuned-a" / "run_card.html").write_text(card, encoding="utf-8")
        config = AppConfig(model=str(tiny_models["llama"]), mode="audience", profile=audience_profile())
        served = build_server(Engine(config), config, VoteStore(tmp_path / "v.sqlite"))
        with running(served, "127.0.0.1", free_port()) as url:
            page = json.dumps(httpx.get(f"{url}/config").json())
        assert "About this model" in page and "held-out: w1 -&gt; r1" in page  # in an iframe's srcdoc, escaped


def test_the_pages_unqueued_events_pass_the_endpoint_guard(roles: dict) -> None:
    """Stop, Undo and unlocking Send after a reply run through /run/predict by fn_index; the guard refused them as an
    unknown action 'predict', and Send stayed disabled after the first reply of every chat."""
    builder = roles["served"].builder
    index = next(i for i, fn in builder.fns.items() if getattr(fn.fn, "__name__", "") == "unlock")
    http = signed_in(roles["url"], BUILDER, "/builder")
    body = {"data": [], "fn_index": index, "session_hash": "x3", "event_data": None, "trigger_id": None}
    r = http.post("/builder/gradio_api/run/predict", json=body)
    assert r.status_code == 200, r.text
    unknown = http.post("/builder/gradio_api/run/predict", json={**body, "fn_index": 10_000})
    assert unknown.status_code == 404 and "sign in as builder" in unknown.text


def _file_part(path: str) -> dict:
    return {"type": "file", "file": {"path": path, "meta": {"_type": "gradio.FileData"}}}


def test_queued_events_cannot_skip_the_queue_by_direct_post(roles: dict) -> None:
    """Gradio's /run/<name> route ran a queued event at once outside Spaces, past the queue and its concurrency
    limit: a visitor's script could put any number of replies on the cores beside the queued ones. Both apps now
    refuse it, and the same reply through the queue (gradio_client) still works. (The page's unqueued events keep
    /run/predict: test_the_pages_unqueued_events_pass_the_endpoint_guard.)"""
    url = roles["url"]
    visitor = signed_in(url, AUDIENCE)
    for name in ("respond", "chat", "classify", "arena_ask"):
        r = visitor.post(f"/gradio_api/run/{name}", json={"data": ["w1 w2", []]})
        assert r.status_code == 404 and "join the queue" in r.text, (name, r.status_code, r.text[:200])
    builder = signed_in(url, BUILDER, "/builder")
    r = builder.post("/builder/gradio_api/run/start_training", json={"data": []})
    assert r.status_code == 404 and "join the queue" in r.text, r.text[:200]
    reply = Client(url, auth=AUDIENCE, verbose=False).predict("w1 w2 good", "tuned-a", api_name="/chat")
    assert isinstance(reply, str) and reply.strip(), "the same reply through the queue"


def test_a_visitor_cannot_hand_the_server_a_file_path(roles: dict) -> None:
    """A server path in a chat message's file part was copied into Gradio's served cache (``/etc/passwd``), and
    ``/dev/zero`` froze the whole server: mounted apps skipped Gradio's own check. Now the audience app refuses any
    file, Gradio's check is on for every mounted app, and the server keeps answering."""
    import secrets

    from demo import server

    secret = roles["home"] / "secret.txt"
    marker = f"top secret {secrets.token_hex(8)}"  # unique: Gradio's cache folder outlives test runs
    secret.write_text(marker, encoding="utf-8")
    http = signed_in(roles["url"], AUDIENCE)
    respond = next(i for i, fn in roles["served"].audience.fns.items() if fn.api_name == "respond")
    for path in (str(secret), "/dev/zero"):
        history = [{"role": "user", "content": [_file_part(path)]}]
        body = {"data": ["hi", history, None], "fn_index": respond, "session_hash": "f1", "event_data": None}
        r = http.post("/gradio_api/queue/join", json=body)
        assert r.status_code == 400 and r.json()["detail"] == server.TEXT_ONLY, r.text
        for route in ("call/respond", "call/v2/respond", "api/respond", "run/respond"):
            r = http.post(f"/gradio_api/{route}", json={"data": body["data"]})
            assert r.status_code == 400 and r.json()["detail"] == server.TEXT_ONLY, (route, r.text)
    # Gradio's upload route is closed to the audience (nothing there takes a file); the builder keeps it.
    csv = {"files": ("a.csv", b"text,label\nx,y\n")}
    up = http.post("/gradio_api/upload", files=csv)
    assert up.status_code == 400 and up.json()["detail"] == server.TEXT_ONLY
    builder = signed_in(roles["url"], BUILDER, "/builder")
    assert builder.post("/builder/gradio_api/upload", files=csv).status_code == 200
    # Embedded components (an Image opened any path, a File fetched any URL), escaped keys and UTF-16 bodies too.
    image = {"type": "component", "component": "image", "value": {"path": str(secret)}}
    image |= {"constructor_args": {}, "props": {}}
    sneaky = (
        '{"data": ["hi", [{"role": "user", "content": [{"file": {"path": "/etc/hostname", "meta": {"_type": '
        '"gradio\\u002eFileData"}}, "type": "file"}]}], null], "fn_index": INDEX, "session_hash": "f2"}'
    ).replace("INDEX", str(respond))
    bodies = [
        json.dumps({**body, "data": ["hi", [{"role": "user", "content": [image]}], None]}).encode(),
        sneaky.encode(),
        sneaky.encode("utf-16"),
    ]
    for raw in bodies:
        r = http.post("/gradio_api/queue/join", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["detail"] == server.TEXT_ONLY, (raw[:80], r.text)
    # Gradio's streamed-input routes (they replace a queued event's data after the guard read it) are closed too.
    assert http.post("/gradio_api/stream/abc", json={"data": []}).status_code == 400
    # Behind the guard, the audience's chat itself reads only text: an embedded component is never built.
    from gradio.components.chatbot import ChatbotDataMessages

    bot = next(b for b in roles["served"].audience.blocks.values() if getattr(b, "elem_id", None) == "df-chatbot")
    sent = [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}]
    parts = bot.preprocess(ChatbotDataMessages(root=sent))
    assert [c for m in parts for c in m["content"]] == [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]
    # A message that only mentions the words is text.
    assert not server._beyond_text(json.dumps({"data": ["a path, a url, gradio.FileData?", [], None]}).encode())
    # Gradio's own check (the builder app takes files, so only it stands there): a path nobody uploaded is refused.
    assert roles["served"].audience.has_launched and roles["served"].builder.has_launched
    from gradio import processing_utils
    from gradio.context import LocalContext
    from gradio.exceptions import InvalidPathError

    token = LocalContext.blocks.set(roles["served"].builder)
    try:
        with pytest.raises(InvalidPathError, match="not uploaded by a user"):
            processing_utils._check_allowed(str(secret), check_in_upload_folder=True)
    finally:
        LocalContext.blocks.reset(token)
    assert marker not in "".join(
        p.read_text(errors="replace") for p in Path(processing_utils.utils.get_upload_folder()).rglob("secret.txt")
    )
    assert http.get("/config").status_code == 200  # still serving


def test_the_audience_file_route_serves_only_the_pages_own_files(roles: dict) -> None:
    """Gradio's upload cache is one per process, and its file route serves anything in it: a dataset the builder
    uploaded was readable by any visitor with its path, and the route fetched any public URL for a visitor. The
    audience app's file route now serves only what its own page shows (the logo); the builder's is unchanged."""
    builder = signed_in(roles["url"], BUILDER, "/builder")
    up = builder.post("/builder/gradio_api/upload", files={"files": ("private.csv", b"text,label\nsecret,x\n")})
    assert up.status_code == 200, up.text
    uploaded = up.json()[0]
    assert builder.get(f"/builder/gradio_api/file={uploaded}").text.startswith("text,label")
    audience = signed_in(roles["url"], AUDIENCE)
    folder, name = uploaded.rsplit("/", 1)
    dotted = f"file={folder}/%2E%2E/{folder.rsplit('/', 1)[-1]}/{name}"  # httpx would resolve a plain '..' itself
    for target in (f"file={uploaded}", f"file/{uploaded}", dotted, f"file={uploaded.replace('/', '%2F')}"):
        r = audience.get(f"/gradio_api/{target}")
        assert r.status_code == 403 and "secret" not in r.text, (target, r.status_code, r.text)
    assert audience.head(f"/gradio_api/file={uploaded}").status_code == 403
    r = audience.get("/gradio_api/file=https://example.com/logo.png")  # no fetching on a visitor's behalf
    assert r.status_code == 403 and r.json()["detail"] == "This demo serves only the files its own page shows."
    # The page's own logo is still served, at the URL the page asks for.
    logos = [
        c["props"]["value"]
        for c in roles["served"].audience.config["components"]
        if c.get("type") == "image" and c["props"].get("value")
    ]
    assert len(logos) == 1
    r = audience.get(f"/gradio_api/file={logos[0]['path']}")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.status_code
    assert httpx.get(f"{roles['url']}/gradio_api/file={logos[0]['path']}").status_code in (401, 403)  # signed out


def test_cancel_on_the_builder_app_needs_the_builders_sign_in(roles: dict) -> None:
    """Gradio's cancel route skipped the sign-in every other route of a mounted app has: it answered 200 to anyone."""
    body = {"event_id": "x", "session_hash": "abc", "fn_index": 0}
    assert httpx.post(f"{roles['url']}/builder/gradio_api/cancel", json=body).status_code == 401
    audience = signed_in(roles["url"], AUDIENCE)
    assert audience.post("/builder/gradio_api/cancel", json=body).status_code == 401
    assert audience.post("/gradio_api/cancel", json=body).status_code == 200  # the audience's own, signed in
    builder = signed_in(roles["url"], BUILDER, "/builder")
    assert builder.post("/builder/gradio_api/cancel", json=body).status_code == 200
    # The streamed-input routes lack Gradio's sign-in check as well.
    assert httpx.post(f"{roles['url']}/builder/gradio_api/stream/x", json={"data": []}).status_code == 401
    assert builder.post("/builder/gradio_api/stream/x", json={"data": []}).status_code != 401
