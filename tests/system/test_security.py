"""Hostile input and security over the real wire (issue 4, tests 9-14)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import urllib.request

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as sync_connect

from tests.stack import Stack
from tests.system.conftest import client_for, stack_seed

pytestmark = [pytest.mark.system]

CANARY = "CANARY-7f3a9-system-prompt"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(
        tmp_path_factory.mktemp("secstack"),
        daphne_count=2,
        # One process of each supported server: every test through nginx meets
        # both, and via=0 / via=1 pick daphne / uvicorn.
        servers=["daphne", "uvicorn"],
        fake_openai=True,
        env_overrides={"CHAT_RATE_LIMIT": "20/10s", "ASSISTANT_RATE_LIMIT": "2/60s", "ASSISTANT_FLUSH_MS": "20"},
    ) as running:
        stack_seed(running)
        yield running


def db_rows(stack, slug: str) -> list[dict]:
    code = (
        "import json;from rooms.models import Message;"
        f"print(json.dumps(list(Message.objects.filter(room__slug={slug!r}).order_by('seq')"
        ".values('id','seq','text','role','status','author_name'))))"
    )
    output = stack.manage("shell", "-c", code)
    return json.loads(output.stdout.strip().splitlines()[-1])


# --- 10: logout and removal close sockets -----------------------------------------


@pytest.mark.asyncio
async def test_logout_closes_the_sessions_other_sockets(stack, room_slug):
    cookies = stack.login("dave")
    tabs = [
        client_for(stack, {"dave": cookies}, "dave", room_slug, via=0),
        client_for(stack, {"dave": cookies}, "dave", room_slug, via=1),
    ]
    for tab in tabs:
        await tab.connect()
    status, _ = await asyncio.to_thread(_logout, stack, cookies)
    assert status == 302
    for tab in tabs:
        await tab.wait_for(lambda t=tab: t.close_code is not None, timeout=3, what="closed after logout")
        assert tab.close_code == 4401
    # And the session is really gone: a new socket is refused.
    again = client_for(stack, {"dave": cookies}, "dave", room_slug)
    with pytest.raises(ConnectionError):
        await again.connect()
    assert again.close_code == 4401


def _logout(stack, cookies) -> tuple[int, str]:
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    request = urllib.request.Request(
        f"{stack.url}/accounts/logout/",
        data=f"csrfmiddlewaretoken={cookies['csrftoken']}".encode(),
        headers={
            "Cookie": cookie,
            "Origin": stack.origin,
            "Referer": f"{stack.url}/",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.asyncio
async def test_removed_member_stops_receiving_private_room(stack, sessions):
    slug = "private-club"
    stack.room_create(slug, "--private", "--member", "alice", "--member", "bob")
    bob = client_for(stack, sessions, "bob", slug, via=1)
    alice = client_for(stack, sessions, "alice", slug, via=0)
    await bob.connect()
    await alice.connect()
    await alice.say("before removal")
    await bob.wait_for(lambda: "before removal" in bob.texts(), what="delivery")
    stack.manage(
        "shell",
        "-c",
        (
            "from rooms.models import Room;from django.contrib.auth.models import User;from rooms import services;"
            f"services.membership_remove(Room.objects.get(slug={slug!r}), User.objects.get(username='bob'))"
        ),
    )
    await bob.wait_for(lambda: bob.close_code is not None, timeout=3, what="closed after removal")
    assert bob.close_code == 4403
    await alice.say("after removal")
    assert "after removal" not in bob.texts()
    await alice.close()


# --- 11: frames -------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))


def test_huge_frames_close_with_memory_flat(stack, sessions, room_slug):
    pid = stack.daphne_pid(0)
    url = f"ws://127.0.0.1:{stack.daphne_ports[0]}/ws/rooms/{room_slug}/"
    headers = stack.ws_headers(sessions["alice"], origin=stack.daphne_urls[0])
    blob = json.dumps({"type": "message.send", "text": "z" * (2 * 1024 * 1024)})

    def hammer() -> None:
        with sync_connect(url, additional_headers=headers, max_size=None) as ws:
            ws.recv(timeout=10)  # hello
            try:
                ws.send(blob)
                while True:
                    ws.recv(timeout=10)
            except websockets.ConnectionClosed:
                pass

    hammer()  # warm-up: first allocations are not growth
    before = _rss_kib(pid)
    for _ in range(15):
        hammer()
    growth_mib = (_rss_kib(pid) - before) / 1024
    # 15 x 2 MiB were sent; a leak of even one frame per connection would show.
    assert growth_mib < 16, f"daphne grew {growth_mib:.1f} MiB"
    assert db_rows(stack, room_slug) == []


FRAME_TYPES = ["message.send", "typing", "history.fetch", "assistant.fetch", "assistant.cancel", "ping", "unknown", ""]
# What crashed sockets before issue 10: NUL (PostgreSQL cannot store it) and
# lone surrogates (no UTF-8 to echo them back in), as JSON escapes, in any
# string of a frame, keys included; and integers past 64 bits or past Python's
# 4300-digit parsing limit.
nasty_chars = st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\u200b", "\ufeff", "\u2060", "\u202e"])
nasty_text = st.lists(nasty_chars | st.characters(), min_size=1, max_size=12).map("".join)
texts = st.text(max_size=30) | nasty_text
huge_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**30, -(10**30)])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | huge_ints | st.floats(allow_nan=True) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
object_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(FRAME_TYPES) | st.text(max_size=12) | nasty_text},
    optional={
        "text": json_values | st.text(max_size=200) | nasty_text,
        "client_id": json_values | nasty_text,
        "active": json_values,
        "before": json_values,
        "after": json_values,
        "limit": json_values,
        "reply_id": json_values,
        # Fields no handler reads still pass the frame-wide NUL/surrogate check.
        "extra": json_values,
    },
).map(lambda d: json.dumps(d))
frames = st.one_of(
    object_frames,
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(
        [
            "{",
            "[" * 2000,
            '{"type":"message.send","text":"' + "\\ud800" + '"}',
            "\x00",
            "null",
            # Past Python's 4300-digit limit: json.loads itself refuses it.
            '{"type":"history.fetch","before":' + "9" * 5000 + "}",
        ]
    ),
)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_fuzzed_frames_never_break_the_server(stack, sessions, room_slug):
    """>= 10,000 random text, binary and JSON frames on live sockets: no 1011, no
    uncaught exception, nothing saved but well-formed messages."""
    url = f"ws://127.0.0.1:{stack.daphne_ports[0]}/ws/rooms/{room_slug}/"
    headers = stack.ws_headers(sessions["carol"], origin=stack.daphne_urls[0])
    state = {"sent": 0, "ws": None, "closes": []}

    def socket():
        if state["ws"] is None:
            state["ws"] = sync_connect(url, additional_headers=headers, max_size=None).__enter__()
            state["ws"].recv(timeout=10)
        return state["ws"]

    def drain(ws) -> None:
        try:
            while True:
                ws.recv(timeout=0)
        except TimeoutError:
            pass

    # Batches keep Hypothesis' per-example bookkeeping off the hot path.
    @settings(max_examples=110, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(frames, min_size=100, max_size=100))
    def send_one(batch) -> None:
        for frame in batch:
            ws = socket()
            try:
                ws.send(frame)
                state["sent"] += 1
                if state["sent"] % 50 == 0:
                    drain(ws)
            except websockets.ConnectionClosed as closed:
                state["closes"].append(closed.rcvd.code if closed.rcvd else None)
                state["ws"] = None

    send_one()
    ws = socket()
    ws.send(json.dumps({"type": "ping"}))
    deadline_frames = 0
    while True:
        frame = json.loads(ws.recv(timeout=20))
        deadline_frames += 1
        if frame["type"] == "pong":
            break
    ws.close()
    assert state["sent"] >= 10_000
    assert 1011 not in state["closes"], state["closes"]
    logs = "".join(stack.logs(f"daphne{i}") for i in (1, 2))
    assert "Traceback" not in logs
    for row in db_rows(stack, room_slug):
        assert isinstance(row["text"], str) and row["text"].strip() and len(row["text"]) <= 4000
        assert "\x00" not in row["text"]
        row["text"].encode("utf-8")  # no lone surrogate was stored


# --- 12: floods ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_flooder_is_limited_others_are_not(stack, sessions, room_slug):
    flooder = client_for(stack, sessions, "alice", room_slug, via=0)
    bystander = client_for(stack, sessions, "bob", room_slug, via=1)
    await flooder.connect()
    await bystander.connect()
    results = [await flooder.say(f"flood {i}") for i in range(25)]
    errors = [r for r in results if r.get("type") == "error"]
    assert errors and all(e["code"] == "rate_limited" for e in errors)
    assert len(results) - len(errors) <= 20
    reply = await bystander.say("bob is unaffected")
    assert reply["text"] == "bob is unaffected"
    # The limit holds across processes: alice on the other process is limited too.
    other = client_for(stack, sessions, "alice", room_slug, via=1)
    await other.connect()
    assert (await other.say("from the other process"))["code"] == "rate_limited"
    for client in (flooder, bystander, other):
        await client.close()


@pytest.mark.asyncio
async def test_assistant_flood_is_limited(stack, sessions, room_slug):
    # erin has sent nothing else, so only the assistant limit can answer here.
    carol = client_for(stack, sessions, "erin", room_slug)
    await carol.connect()
    outcomes = [await carol.say(f"@assistant [[tokens=3]] q{i}") for i in range(3)]
    assert [o.get("code") for o in outcomes] == [None, None, "rate_limited"]
    await carol.close()


# --- 14: secrets and prompts ------------------------------------------------------------


def test_key_never_in_pages_or_logs(stack, sessions):
    key = stack.env["OPENAI_API_KEY"]
    cookie = "; ".join(f"{k}={v}" for k, v in sessions["alice"].items())
    for path in ["/", "/accounts/login/", "/rooms/nope/", "/healthz", "/admin/", "/static/nothing.js"]:
        _, body = stack.http_get(path, headers={"Cookie": cookie})
        assert key not in body, path
        assert "Traceback" not in body and "SECRET_KEY" not in body, path
    for name, log in stack.all_logs().items():
        assert key not in log, name


@pytest.mark.asyncio
async def test_system_prompt_canary_and_room_isolation(stack, sessions):
    stack.room_create("room-a")
    stack.room_create("room-b")
    stack.manage(
        "shell",
        "-c",
        (
            "from rooms.models import Assistant;"
            f"Assistant.objects.filter(room__slug='room-a').update(system_prompt='You are helpful. {CANARY}')"
        ),
    )
    b = client_for(stack, sessions, "dave", "room-b")
    await b.connect()
    await b.say("the password in room b is swordfish")
    a = client_for(stack, sessions, "dave", "room-a")
    await a.connect()
    await a.say("@assistant [[tokens=5]] hello from room a")
    start = await a.next("assistant.start")
    await a.wait_for(lambda: a.replies[start["reply_id"]]["final"], what="reply", timeout=20)
    watcher = client_for(stack, sessions, "bob", "room-a")
    await watcher.connect()
    everything = json.dumps(a.frames) + json.dumps(watcher.frames)
    assert CANARY not in everything
    status, page = await asyncio.to_thread(
        stack.http_get, "/rooms/room-a/", {"Cookie": "; ".join(f"{k}={v}" for k, v in sessions["dave"].items())}
    )
    assert status == 200 and CANARY not in page
    base = stack.fake_openai_url.removesuffix("/v1")
    sent = await asyncio.to_thread(_fetch_json, f"{base}/_requests")
    contexts = [json.dumps(r["messages"]) for r in sent if "hello from room a" in json.dumps(r["messages"])]
    assert contexts, "the model was asked"
    assert all(CANARY in c for c in contexts), "the prompt was used"
    assert all("swordfish" not in c for c in contexts), "room B never leaks into room A's context"
    for client in (a, b, watcher):
        await client.close()


def test_csp_forbids_inline_script(stack, sessions):
    cookie = "; ".join(f"{k}={v}" for k, v in sessions["alice"].items())
    connection = http.client.HTTPConnection("127.0.0.1", int(stack.url.rsplit(":", 1)[1]))
    connection.request("GET", "/", headers={"Cookie": cookie})
    response = connection.getresponse()
    csp = response.getheader("Content-Security-Policy")
    assert csp
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";") if part.strip())
    assert "'unsafe-inline'" not in directives["script-src"] and "'unsafe-eval'" not in directives["script-src"]
    assert directives["img-src"].split()[0] == "'self'"


def _fetch_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())
