"""Issue 10 over the real wire: one daphne and one uvicorn process behind nginx,
a private Redis, the fake model server, PostgreSQL when DATABASE_URL names it.

Each test names the hole it closes: database connections bounded by the pool,
exact Origins, access lost closes sockets on every process, crash inputs,
log-in and sign-up throttling, the site-wide assistant cap, typing floods, the
per-user socket cap, invisible private rooms, zero-width text, bad Hosts.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets

from tests.stack import DEFAULT_PASSWORD, Stack
from tests.system.conftest import client_for, stack_seed
from tests.system.wsclient import RoomClient

pytestmark = [pytest.mark.system]

POOL_SIZE = 4
LOGIN_LIMIT, LOGIN_ADDRESS_LIMIT, SIGNUP_LIMIT, WINDOW = 3, 8, 3, 10
TYPING_INTERVAL = 1.0
SOCKET_CAP = 3
ASSISTANT_CAP = 2
ROOM_QUEUE = 3
ACCESS_DEADLINE = 1.0  # seconds from the change to the close, on every process

ENV = {
    "CHAT_RATE_LIMIT": "0",
    "ASSISTANT_RATE_LIMIT": "0",
    "ASSISTANT_FLUSH_MS": "20",
    "ASSISTANT_MAX_CONCURRENT": str(ASSISTANT_CAP),
    "ASSISTANT_MAX_QUEUE_PER_ROOM": str(ROOM_QUEUE),
    "CHAT_MAX_SOCKETS_PER_USER": str(SOCKET_CAP),
    "CHAT_TYPING_INTERVAL": str(TYPING_INTERVAL),
    "DATABASE_POOL_SIZE": str(POOL_SIZE),
    "LOGIN_RATE_LIMIT": f"{LOGIN_LIMIT}/{WINDOW}s",
    "LOGIN_ADDRESS_RATE_LIMIT": f"{LOGIN_ADDRESS_LIMIT}/{WINDOW}s",
    "SIGNUP_RATE_LIMIT": f"{SIGNUP_LIMIT}/{WINDOW}s",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("accessstack"),
        daphne_count=2,
        servers=["daphne", "uvicorn"],
        fake_openai=True,
        env_overrides=ENV,
    ) as running:
        stack_seed(running)
        yield running


# --- helpers ------------------------------------------------------------------------

_names = iter(range(1, 10**6))


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


PREPARE = """
import json
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from rooms import services
from rooms.models import Room
U = get_user_model()
def user(name):
    u, made = U.objects.get_or_create(username=name)
    if made:
        u.set_unusable_password()
        u.save()
    return u
def session(name):
    u = user(name)
    s = import_module(settings.SESSION_ENGINE).SessionStore()
    s[SESSION_KEY] = str(u.pk)
    s[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    s[HASH_SESSION_KEY] = u.get_session_auth_hash()
    s.create()
    return s.session_key
out = {"sessions": [session(n) for n in SESSIONS]}
for slug, private, members in ROOMS:
    services.room_create(slug=slug, name=slug, is_private=private, members=[user(m) for m in members])
print("JSON=" + json.dumps(out))
"""


def prepare(stack: Stack, sessions: list[str], rooms: list[tuple[str, bool, list[str]]] = ()) -> list[dict[str, str]]:
    """Users (made on first mention, no usable password), one new session per
    entry of ``sessions`` and rooms, in one manage.py run (each costs ~1.5 s).
    Returns the cookies of each session, in order."""
    code = f"SESSIONS = {sessions!r}\nROOMS = {list(rooms)!r}\n" + PREPARE
    output = stack.manage("shell", "-c", code).stdout
    data = json.loads(output.split("JSON=", 1)[1].strip().splitlines()[0])
    return [{"sessionid": key} for key in data["sessions"]]


def shell_timed(stack: Stack, code: str) -> float:
    """Run ``code`` in a separate manage.py process (so anything it changes
    reaches the servers only through the database and Redis); return the wall
    time just before the change."""
    script = "import time\nfrom django.contrib.auth import get_user_model\nU = get_user_model()\n"
    script += "T0 = time.time()\n" + code + "\nprint('T0=%r' % T0)\n"
    output = stack.manage("shell", "-c", script).stdout
    return float(re.search(r"T0=([0-9.]+)", output).group(1))


def client(stack: Stack, cookies: Mapping[str, str], slug: str, via: int | None, name: str = "") -> RoomClient:
    return client_for(stack, {name or "u": dict(cookies)}, name or "u", slug, via=via)


async def closed_at(tab: RoomClient, timeout: float = 10.0) -> float | None:
    """Wall time at which ``tab`` saw its socket close (None: still open)."""
    deadline = time.monotonic() + timeout
    while tab.close_code is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.005)
    return time.time()


def db_rows(stack: Stack, slug: str) -> list[dict]:
    code = (
        "import json;from rooms.models import Message;"
        f"print('JSON=' + json.dumps(list(Message.objects.filter(room__slug={slug!r}).order_by('seq')"
        ".values('id','seq','text','role','status','author_name','in_reply_to_id'))))"
    )
    output = stack.manage("shell", "-c", code).stdout
    return json.loads(output.split("JSON=", 1)[1].strip().splitlines()[0])


def server_logs(stack: Stack) -> str:
    return "".join(stack.logs(f"daphne{i + 1}") for i in range(stack.daphne_count))


def ws_base(stack: Stack, via: int | None) -> tuple[str, str]:
    """(ws URL, the site's own Origin) through nginx (None) or straight to process ``via``."""
    http_base = stack.url if via is None else stack.daphne_urls[via]
    return "ws" + http_base.removeprefix("http"), http_base


def cookie_header(cookies: Mapping[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


# --- (a) database connections are bounded by the pool -------------------------------


def _pg_connections(stack: Stack) -> int:
    import psycopg

    parts = urllib.parse.urlsplit(stack.database_url)
    name = parts.path.lstrip("/")
    admin = urllib.parse.urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
            [name],
        ).fetchone()
    return int(row[0])


def test_database_connections_stay_within_the_pool(stack, sessions):
    """200 concurrent requests (health checks, the log-in page, a logged-in page)
    through nginx: PostgreSQL never sees more than DATABASE_POOL_SIZE connections
    per server process, during the burst or after it. (With CONN_MAX_AGE under
    ASGI each request left one open: 200 requests, ~200 connections.)"""
    if not stack.database_url.startswith(("postgres://", "postgresql://", "postgres+psycopg://")):
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/test")
    bound = POOL_SIZE * stack.daphne_count
    cookie = cookie_header(sessions["alice"])
    paths = [("/healthz", {}), ("/accounts/login/", {}), ("/", {"Cookie": cookie})]
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_pg_connections(stack))
            time.sleep(0.02)

    def fetch(index: int) -> int:
        path, headers = paths[index % len(paths)]
        return stack.http_get(path, headers=headers, timeout=30)[0]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(max_workers=200) as pool:
            statuses = list(pool.map(fetch, range(200)))
    finally:
        done.set()
        sampler.join(10)
    time.sleep(1.0)
    after = _pg_connections(stack)
    assert statuses.count(200) == 200, sorted(set(statuses))
    assert samples and max(samples) <= bound, f"{max(samples)} connections during the burst; bound {bound}"
    assert after <= bound, f"{after} connections left open; bound {bound}"


# --- (b) Origins: scheme, host and port -------------------------------------------------


async def _handshake(url: str, headers: Mapping[str, str]) -> int | dict:
    """HTTP status of a refused handshake, or the hello frame of an accepted one."""
    try:
        async with websockets.connect(url, additional_headers=dict(headers), open_timeout=10) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.asyncio
@pytest.mark.parametrize("via", [0, 1, None], ids=["daphne", "uvicorn", "nginx"])
async def test_only_the_sites_exact_origin_may_open_a_socket(stack, sessions, via):
    """Cookies are not scoped by port: a page on another port or scheme of the same
    host would ride the victim's session if the Origin check compared host names
    only. Each server refuses every origin but its own exact one (HTTP 403)."""
    slug = "origin-room"
    stack.room_create(slug)  # idempotent
    ws, own = ws_base(stack, via)
    port = int(own.rsplit(":", 1)[1])
    # The site's URL (nginx) is in DJANGO_CSRF_TRUSTED_ORIGINS: accepted everywhere.
    trusted = stack.url
    others = [p for p in stack.daphne_ports if p != port]
    cookie = cookie_header(sessions["alice"])
    refused = [
        *(f"http://127.0.0.1:{other}" for other in others),
        "http://127.0.0.1:9999",
        "http://127.0.0.1",
        f"https://127.0.0.1:{port}",
        f"ftp://127.0.0.1:{port}",
        f"ws://127.0.0.1:{port}",
        f"http://127.0.0.1:{port}.evil.example",
        f"http://evil.example:{port}",
        "null",
    ]
    url = f"{ws}/ws/rooms/{slug}/"
    for origin in refused:
        # 403 from the origin check; autobahn (daphne) answers a malformed
        # Origin (a port that is not a number) with 400 before the app sees it.
        status = await _handshake(url, {"Cookie": cookie, "Origin": origin})
        assert status == 403 or (status == 400 and via != 1 and ".evil" in origin), (origin, status)
    # The proxy sets the scheme: a client's own X-Forwarded-Proto does not make
    # an https origin the site's (nginx overwrites it).
    if via is None:
        headers = {"Cookie": cookie, "Origin": f"https://127.0.0.1:{port}", "X-Forwarded-Proto": "https"}
        assert await _handshake(url, headers) == 403
    for origin in {own, trusted}:
        hello = await _handshake(url, {"Cookie": cookie, "Origin": origin})
        assert isinstance(hello, dict) and hello["type"] == "hello", (origin, hello)
    assert "Traceback" not in server_logs(stack)


# --- (c) losing access closes the socket on every process ---------------------------------

# case -> (the room is private, the change (run in manage.py shell), the close code)
REVOCATIONS = {
    "deactivated": (False, "u = U.objects.get(username=USER); u.is_active = False; u.save()", 4401),
    "password_changed": (False, "u = U.objects.get(username=USER); u.set_password('a-new-secret-42'); u.save()", 4401),
    "session_deleted": (
        False,
        "from django.contrib.sessions.models import Session\nSession.objects.filter(session_key=SESSION).delete()",
        4401,
    ),
    "user_deleted": (False, "U.objects.get(username=USER).delete()", 4401),
    "removed_from_private_room": (
        True,
        "from rooms import services\nfrom rooms.models import Room\n"
        "services.membership_remove(Room.objects.get(slug=SLUG), U.objects.get(username=USER))",
        4403,
    ),
    "room_made_private": (
        False,
        "from rooms.models import Room\nr = Room.objects.get(slug=SLUG); r.is_private = True; r.save()",
        4403,
    ),
    "room_deleted": (False, "from rooms.models import Room\nRoom.objects.get(slug=SLUG).delete()", 4404),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(REVOCATIONS))
async def test_lost_access_closes_sockets_on_every_process_within_a_second(stack, case):
    """The change is made by a separate process (manage.py shell): the servers
    learn of it only through Redis. The user's sockets on both processes close
    with the documented code within a second; a bystander who kept access (a
    member of the room, another session of the same user) stays connected."""
    private, change, code = REVOCATIONS[case]
    user, keeper, slug = unique("rv-user"), unique("rv-keeper"), unique("rv-room")
    # The user is a member of the private room (and of the public one, where
    # making it private keeps members and drops everyone else).
    members = [keeper] if case == "room_made_private" else [keeper, user]
    cookies, other_session, keeper_cookies = prepare(stack, [user, user, keeper], [(slug, private, members)])
    tabs = [
        client(stack, cookies, slug, via=0, name=f"{user}@daphne"),
        client(stack, cookies, slug, via=1, name=f"{user}@uvicorn"),
    ]
    stays = [client(stack, keeper_cookies, slug, via=1, name="keeper")]
    if case == "session_deleted":
        stays.append(client(stack, other_session, slug, via=0, name=f"{user}-other-session"))
    if case == "room_deleted":
        stays = []
    for tab in [*tabs, *stays]:
        await tab.connect()
    watchers = [asyncio.ensure_future(closed_at(tab)) for tab in tabs]
    prelude = f"USER = {user!r}\nSLUG = {slug!r}\nSESSION = {cookies['sessionid']!r}\n"
    t0 = await asyncio.to_thread(shell_timed, stack, prelude + change)
    ends = await asyncio.gather(*watchers)
    for tab, end in zip(tabs, ends, strict=True):
        assert end is not None, f"{tab.name} still open after {case}"
        assert tab.close_code == code, (tab.name, tab.close_code)
        assert end - t0 < ACCESS_DEADLINE, f"{tab.name} closed {end - t0:.2f} s after the change"
    await asyncio.sleep(0.5)
    for tab in stays:
        assert tab.close_code is None, f"{tab.name} was closed ({tab.close_code}) by {case}"
        await tab.close()
    # Reconnecting is refused too (the room is gone, private, or the session dead).
    again = client(stack, cookies, slug, via=None, name="again")
    with pytest.raises(ConnectionError):
        await again.connect()
    assert again.close_code in (4401, 4403, 4404)


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["user_deleted", "deactivated", "membership_deleted"])
async def test_every_action_rechecks_access_even_without_an_event(stack, case):
    """Access taken away behind the application's back (raw SQL: no signal, no
    event reaches the sockets): the next action of each open socket still
    finds out, in its own transaction, and closes it cleanly (4401/4403) —
    no IntegrityError, no 1011, nothing saved."""
    user, slug = unique("ghost"), unique("ghost-room")
    private = case == "membership_deleted"
    [cookies] = prepare(stack, [user], [(slug, private, [user] if private else [])])
    tabs = [client(stack, cookies, slug, via=0, name="daphne"), client(stack, cookies, slug, via=1, name="uvicorn")]
    for tab in tabs:
        await tab.connect()
    table = {
        "user_deleted": "DELETE FROM auth_user WHERE username = %s",
        "deactivated": "UPDATE auth_user SET is_active = false WHERE username = %s",
        "membership_deleted": (
            "DELETE FROM rooms_membership WHERE user_id = (SELECT id FROM auth_user WHERE username = %s)"
        ),
    }[case]
    code = f"from django.db import connection\nconnection.cursor().execute({table!r}, [{user!r}])"
    await asyncio.to_thread(shell_timed, stack, code)
    await asyncio.sleep(0.3)
    for tab in tabs:
        assert tab.close_code is None, "no event was sent: the socket is still open"
        await tab.send({"type": "message.send", "text": "after losing access", "client_id": unique("c")})
    for tab in tabs:
        await tab.wait_for(lambda t=tab: t.close_code is not None, timeout=5, what="closed on its next action")
        assert tab.close_code == (4403 if private else 4401), (tab.name, tab.close_code)
    assert db_rows(stack, slug) == []
    logs = server_logs(stack)
    assert "Traceback" not in logs and "IntegrityError" not in logs


# --- (d) crash inputs ----------------------------------------------------------------------

# (raw frame, the error code it must get)
CRASH_FRAMES = [
    (r'{"type":"message.send","text":"hello","client_id":"a\u0000b"}', "bad_request"),
    (r'{"type":"message.send","text":"hello","client_id":"\ud800"}', "bad_request"),
    (r'{"type":"message.send","text":"hello","client_id":"\udfff\ud800"}', "bad_request"),
    (r'{"type":"message.send","text":"nul \u0000 inside"}', "bad_request"),
    (r'{"type":"message.send","text":"lone \ud83d surrogate"}', "bad_request"),
    (r'{"type":"message.send","text":"x","meta":{"k\u0000":{"deeper":[1,{"\u0000":2}]}}}', "bad_request"),
    (r'{"type":"message.send","text":"x","\ud800":{"\u0000":null}}', "bad_request"),
    (r'{"type":"\ud800"}', "bad_request"),
    (r'{"type":"unknown\u0000type"}', "bad_request"),
    (r'{"type":"typing","active":true,"x":["\udc00"]}', "bad_request"),
    ('{"type":"history.fetch","before":' + "9" * 400 + "}", "bad_request"),
    ('{"type":"history.fetch","before":' + "9" * 5000 + "}", "bad_json"),
    ('{"type":"history.fetch","before":1e999}', "bad_request"),
    ('{"type":"assistant.cancel","reply_id":-' + "9" * 30 + "}", "bad_request"),
    ('{"type":"message.send","text":"raw\x00nul"}', "bad_json"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("via", [0, 1], ids=["daphne", "uvicorn"])
async def test_crash_inputs_get_error_frames_not_1011(stack, sessions, via):
    """Each frame that closed a socket with 1011 and a traceback before (NUL in
    client_id: DataError on PostgreSQL; a lone surrogate echoed back:
    UnicodeEncodeError) now gets an ``error`` frame and the socket stays."""
    slug = unique("crash")
    stack.room_create(slug)
    tab = client_for(stack, sessions, "carol", slug, via=via)
    await tab.connect()
    for raw, code in CRASH_FRAMES:
        await tab.send(raw)
        frame = await tab.next("error", "message")
        assert frame["type"] == "error" and frame["code"] == code, (raw[:80], frame)
        assert "client_id" not in frame or "\x00" not in frame["client_id"]
    await tab.send({"type": "ping"})
    await tab.next("pong")
    assert tab.close_code is None
    await tab.close()
    assert db_rows(stack, slug) == []
    assert "Traceback" not in server_logs(stack)


@pytest.mark.asyncio
@pytest.mark.parametrize("via", [0, 1, None], ids=["daphne", "uvicorn", "nginx"])
async def test_unrouted_socket_paths_are_refused_cleanly(stack, sessions, via):
    """No route: refused at the handshake (HTTP 403), logged-in or not, with no
    traceback (channels' router raised, and the server answered 500)."""
    stack.room_create("lobby")
    ws, own = ws_base(stack, via)
    with_session = {"Cookie": cookie_header(sessions["alice"]), "Origin": own}
    for path in ["/ws/rooms/", "/ws/rooms/lobby", "/ws/other/", "/ws/", "/ws/rooms/lobby/extra/", "/ws/rooms/%00/"]:
        for headers in (with_session, {"Origin": own}):
            status = await _handshake(ws + path, headers)
            # nginx itself answers a NUL in the path with 400.
            assert status == 403 or (status == 400 and via is None and "%00" in path), (path, status)
    assert "Traceback" not in server_logs(stack)


# --- (e) log-in and sign-up throttling ---------------------------------------------------


class Form:
    """A browser-ish form client through nginx (CSRF cookie and token kept)."""

    def __init__(self, stack: Stack, path: str, source: str | None = None) -> None:
        self.stack = stack
        self.path = path
        self.source = source
        status, headers, body = self.request("GET", {})
        assert status == 200, status
        self.cookies = {k: v for k, v in _set_cookies(headers).items() if k == "csrftoken"}
        self.token = re.search(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"', body).group(1)

    def request(
        self, method: str, headers: Mapping[str, str], body: str | None = None
    ) -> tuple[int, dict[str, str], str]:
        parts = urllib.parse.urlsplit(self.stack.url)
        source = (self.source, 0) if self.source else None
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=source)
        try:
            connection.request(method, self.path, body=body, headers=dict(headers))
            response = connection.getresponse()
            raw_headers = response.getheaders()
            text = response.read().decode("utf-8", "replace")
        finally:
            connection.close()
        merged: dict[str, str] = {}
        for name, value in raw_headers:
            merged.setdefault(name.lower(), value)
        merged["__set_cookie__"] = json.dumps([v for n, v in raw_headers if n.lower() == "set-cookie"])
        return response.status, merged, text

    def post(
        self, fields: Mapping[str, str], extra: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        body = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": self.token})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": cookie_header(self.cookies),
            "Origin": self.stack.origin,
            "Referer": self.stack.url + self.path,
            **(extra or {}),
        }
        return self.request("POST", headers, body)


def _set_cookies(headers: Mapping[str, str]) -> dict[str, str]:
    cookies = {}
    for value in json.loads(headers["__set_cookie__"]):
        key, _, rest = value.partition("=")
        cookies[key.strip()] = rest.split(";", 1)[0]
    return cookies


def _until_throttled(attempt, most: int) -> tuple[int, dict[str, str], str]:
    """Call ``attempt()`` until it answers 429, at most ``most`` times, all in one
    fixed window of the limiter (one about to end is waited out first, so the
    window the 429 counts in has a few seconds left); return that 429."""
    for _ in range(3):
        left = WINDOW - time.time() % WINDOW
        if left < most * 0.7 + 3:
            time.sleep(left + 0.05)
        window = time.time() // WINDOW
        for _ in range(most):
            status, headers, body = attempt()
            if status == 429:
                retry = int(headers["retry-after"])
                assert 1 <= retry <= WINDOW + 1, retry
                return status, headers, body
            assert status in (200, 302), status
        if time.time() // WINDOW == window:
            pytest.fail(f"no 429 after {most} attempts in one window")
    pytest.fail("every round crossed a rate window (a very slow machine)")


def test_login_throttled_per_account_after_failures(stack):
    """After LOGIN_RATE_LIMIT wrong passwords for one account (in any letter
    case), even the right password is refused with 429 and Retry-After, without
    being checked, until the window passes; other accounts from the same address
    are not affected."""
    victim = unique("victim")
    stack.user_create(victim)
    form = Form(stack, "/accounts/login/")
    spellings = iter([victim.upper(), victim.title(), victim, victim.upper()] * 5)
    status, headers, body = _until_throttled(
        lambda: form.post({"username": next(spellings), "password": "wrong-password"}), LOGIN_LIMIT + 1
    )
    assert "Too many failed log-in attempts" in body
    status, headers, body = form.post({"username": victim, "password": DEFAULT_PASSWORD})
    assert status == 429, "the right password must not be checked while throttled"
    assert "Too many failed log-in attempts" in body and 'name="username"' in body
    retry = int(headers["retry-after"])
    # Per account: alice, from the same address, logs in.
    assert form.post({"username": "alice", "password": DEFAULT_PASSWORD})[0] == 302
    time.sleep(retry + 0.2)
    status, headers, _ = form.post({"username": victim, "password": DEFAULT_PASSWORD})
    assert status == 302, status
    assert "sessionid" in _set_cookies(headers)


def test_login_throttled_per_address_after_failures(stack):
    """Wrong passwords for many different names from one address: after
    LOGIN_ADDRESS_RATE_LIMIT of them every log-in from that address is refused
    (429) until the window passes."""
    form = Form(stack, "/accounts/login/")
    names = (unique("nobody") for _ in range(100))
    _until_throttled(lambda: form.post({"username": next(names), "password": "wrong"}), LOGIN_ADDRESS_LIMIT + 1)
    status, headers, body = form.post({"username": "bob", "password": DEFAULT_PASSWORD})
    assert status == 429 and "Too many failed log-in attempts" in body
    time.sleep(int(headers["retry-after"]) + 0.2)
    assert form.post({"username": "bob", "password": DEFAULT_PASSWORD})[0] == 302


def test_login_address_limit_is_not_evaded_by_a_forged_forwarded_for(stack):
    """A client that sends its own X-Forwarded-For must still be counted by its
    real address. (From 127.0.0.2, 127.0.0.3: addresses nginx sees that no
    server trusts as a proxy.)"""
    attempts = LOGIN_ADDRESS_LIMIT + 4
    for source in ("127.0.0.2", "127.0.0.3"):
        form = Form(stack, "/accounts/login/", source=source)
        while time.time() % WINDOW > 1:  # all attempts in one window
            time.sleep(0.1)
        window = time.time() // WINDOW
        checked = 0
        for index in range(attempts):
            forged = {"X-Forwarded-For": f"203.0.113.{index + 1}"}
            status, _, _ = form.post({"username": unique("spoof"), "password": "wrong"}, forged)
            assert status in (200, 429), status
            checked += status == 200
        if time.time() // WINDOW == window:
            break
    else:
        pytest.skip("each run crossed a rate window (a very slow machine)")
    assert checked <= LOGIN_ADDRESS_LIMIT, f"{checked} of {attempts} wrong passwords were checked"


def test_signup_throttled_per_address(stack):
    """Every sign-up attempt from an address counts: beyond SIGNUP_RATE_LIMIT the
    form answers 429 with Retry-After and makes no account, until the window passes."""
    form = Form(stack, "/accounts/signup/")
    made: list[str] = []

    def attempt():
        name = unique("newbie")
        password = "a-long-passphrase-" + uuid.uuid4().hex[:8]
        answer = form.post({"username": name, "password1": password, "password2": password})
        if answer[0] == 302:
            made.append(name)
        return answer

    status, headers, body = _until_throttled(attempt, SIGNUP_LIMIT + 1)
    assert "Too many sign-ups" in body
    refused = unique("refused")
    status, headers, _ = form.post({"username": refused, "password1": "a-long-pass-99", "password2": "a-long-pass-99"})
    assert status == 429
    exists = stack.manage(
        "shell",
        "-c",
        f"from django.contrib.auth.models import User;print(User.objects.filter(username={refused!r}).exists())",
    )
    assert exists.stdout.strip().endswith("False")
    time.sleep(int(headers["retry-after"]) + 0.2)
    assert attempt()[0] == 302


# --- a bad Host header ------------------------------------------------------------------


@pytest.mark.parametrize("via", [0, 1], ids=["daphne", "uvicorn"])
def test_bad_host_logs_one_warning_line(stack, via):
    """Scanners send any Host: answered 400 and logged as ONE warning line
    naming it, not an ERROR with a traceback per request."""
    name = f"daphne{via + 1}"
    before = len(stack.logs(name))
    port = stack.daphne_ports[via]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": "evil.example"})
        assert connection.getresponse().status == 400
    finally:
        connection.close()
    deadline = time.monotonic() + 5
    while "evil.example" not in stack.logs(name)[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    new = stack.logs(name)[before:]
    lines = [line for line in new.splitlines() if line.strip()]
    mentions = [line for line in lines if "evil.example" in line]
    assert len(mentions) == 1, new
    assert " WARNING django.security.DisallowedHost " in mentions[0], mentions[0]
    assert "Traceback" not in new and " ERROR " not in new, new


# --- (f) the site-wide assistant cap ---------------------------------------------------------


def _fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.asyncio
async def test_site_wide_assistant_cap_holds_with_twelve_accounts(stack):
    """Twelve accounts each mention the assistant in their own room at once: the
    model server never streams more than ASSISTANT_MAX_CONCURRENT replies, the
    others are told their place in line, and every one is answered."""
    count = 12
    names = [unique("many") for _ in range(count)]
    slugs = [unique("own-room") for _ in range(count)]
    cookies = prepare(stack, names, [(slug, True, [name]) for slug, name in zip(slugs, names, strict=True)])
    tabs = [client(stack, c, slug, via=None, name=n) for c, slug, n in zip(cookies, slugs, names, strict=True)]
    await asyncio.gather(*(tab.connect() for tab in tabs))
    stats_url = stack.fake_openai_url.removesuffix("/v1") + "/_stats"
    before = await asyncio.to_thread(_fetch_json, stats_url)
    streaming: list[int] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            streaming.append((await asyncio.to_thread(_fetch_json, stats_url))["open_streams"])
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    asks = await asyncio.gather(
        *(tab.say(f"@assistant [[tokens=30]] [[tps=20]] question {i}") for i, tab in enumerate(tabs))
    )
    assert all("id" in ask for ask in asks), asks
    try:
        for tab, ask in zip(tabs, asks, strict=True):
            await tab.wait_for(
                lambda t=tab, a=ask: any(
                    f["type"] == "assistant.end" and f["message"].get("in_reply_to") == a["id"] for f in t.frames
                ),
                timeout=90,
                what="the reply's end",
            )
    finally:
        stop.set()
        await watcher
    after = await asyncio.to_thread(_fetch_json, stats_url)
    assert after["completed"] - before["completed"] == count
    assert max(streaming) <= ASSISTANT_CAP, f"{max(streaming)} replies streamed at once"
    assert max(streaming) == ASSISTANT_CAP, "the cap was never reached: the test proves nothing"
    queued = {}
    for tab, ask in zip(tabs, asks, strict=True):
        positions = [
            f["position"] for f in tab.frames if f["type"] == "assistant.queued" and f["in_reply_to"] == ask["id"]
        ]
        if positions:
            queued[tab.name] = positions
        end = next(f for f in tab.frames if f["type"] == "assistant.end")
        assert end["message"]["status"] == "complete" and end["message"]["text"], end
    assert len(queued) >= count - ASSISTANT_CAP, queued
    assert all(1 <= p <= count for positions in queued.values() for p in positions), queued
    for tab in tabs:
        await tab.close()


@pytest.mark.asyncio
async def test_assistant_queue_per_room_is_bounded(stack):
    """One room cannot queue unbounded model work: beyond
    ASSISTANT_MAX_QUEUE_PER_ROOM waiting mentions the next is refused
    (rate_limited, nothing saved), and every accepted one is answered."""
    user, slug = unique("asker"), unique("queue-room")
    [cookies] = prepare(stack, [user], [(slug, False, [])])
    tab = client(stack, cookies, slug, via=0, name=user)
    await tab.connect()
    answers = [await tab.say(f"@assistant [[tokens=20]] [[tps=20]] request {i}") for i in range(ROOM_QUEUE + 3)]
    accepted = [a for a in answers if "id" in a]
    refused = [a for a in answers if a.get("type") == "error"]
    assert refused and all(r["code"] == "rate_limited" for r in refused), answers
    # The waiting ones, plus at most the one already streaming.
    assert ROOM_QUEUE <= len(accepted) <= ROOM_QUEUE + 1, answers
    for ask in accepted:
        await tab.wait_for(
            lambda a=ask: any(
                f["type"] == "assistant.end" and f["message"].get("in_reply_to") == a["id"] for f in tab.frames
            ),
            timeout=60,
            what="every accepted request answered",
        )
    await tab.close()
    rows = db_rows(stack, slug)
    assert len([r for r in rows if r["role"] == "user"]) == len(accepted)
    assert all(r["status"] == "complete" for r in rows if r["role"] == "assistant")


# --- (g) typing toggles -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_typing_toggles_are_limited_per_socket(stack, sessions):
    """2000 alternating typing frames from one socket reach another socket (on
    the other process) as at most one frame per CHAT_TYPING_INTERVAL (+2), and
    the state shown last is the state sent last."""
    slug = unique("typing")
    stack.room_create(slug)
    typist = client_for(stack, sessions, "dave", slug, via=0)
    watcher = client_for(stack, sessions, "erin", slug, via=1)
    await watcher.connect()
    await typist.connect()
    started = time.monotonic()
    for index in range(2000):
        await typist.send({"type": "typing", "active": index % 2 == 0})
    await typist.send({"type": "ping"})
    await typist.next("pong", timeout=30)  # every typing frame was handled
    await asyncio.sleep(TYPING_INTERVAL + 1.0)  # the last state's flush
    duration = time.monotonic() - started
    seen = [f["active"] for f in watcher.frames if f["type"] == "typing" and f["username"] == "dave"]
    assert seen, "no typing frame was relayed at all"
    assert len(seen) <= duration / TYPING_INTERVAL + 2, f"{len(seen)} frames in {duration:.1f} s"
    assert seen[-1] is False, seen[-5:]
    for tab in (typist, watcher):
        await tab.close()


# --- (h) the per-user socket cap -----------------------------------------------------------


@pytest.mark.asyncio
async def test_socket_cap_per_user_across_processes(stack, sessions):
    """CHAT_MAX_SOCKETS_PER_USER sockets across both processes, then the next one
    closes with 4429; once one is closed a new one opens; others are unaffected."""
    user, slug = unique("capped"), unique("cap-room")
    [cookies] = prepare(stack, [user], [(slug, False, [])])
    tabs = [client(stack, cookies, slug, via=i % 2, name=f"tab{i}") for i in range(SOCKET_CAP)]
    for tab in tabs:
        await tab.connect()
    extra = client(stack, cookies, slug, via=SOCKET_CAP % 2, name="one-too-many")
    with pytest.raises(ConnectionError):
        await extra.connect()
    assert extra.close_code == 4429
    other_user = client_for(stack, sessions, "bob", slug, via=0)
    await other_user.connect()
    await tabs[0].close()
    replacement = client(stack, cookies, slug, via=1, name="replacement")
    deadline = time.monotonic() + 3
    while True:
        try:
            await replacement.connect()
            break
        except ConnectionError:
            assert replacement.close_code == 4429
            assert time.monotonic() < deadline, "a closed socket's place was not freed"
            await asyncio.sleep(0.1)
    for tab in [*tabs[1:], replacement, other_user]:
        assert tab.close_code is None
        await tab.close()


# --- (i) an invisible private room is a missing room ------------------------------------------


@pytest.mark.asyncio
async def test_invisible_private_room_answers_like_a_missing_one(stack, sessions):
    """4404 on the socket and HTTP 404 for the page, exactly as for a room that
    does not exist: nobody can probe for private room names."""
    slug = unique("secret-club")
    stack.room_create(slug, "--private", "--member", "alice")
    for via in (0, 1):
        for target in (slug, unique("no-such-room")):
            tab = client_for(stack, sessions, "bob", target, via=via)
            with pytest.raises(ConnectionError):
                await tab.connect()
            assert tab.close_code == 4404, (via, target)
    member = client_for(stack, sessions, "alice", slug, via=1)
    await member.connect()  # the room is there for its members
    await member.close()
    bob = {"Cookie": cookie_header(sessions["bob"])}
    hidden_status, hidden_page = stack.http_get(f"/rooms/{slug}/", headers=bob)
    missing_status, missing_page = stack.http_get("/rooms/no-such-room-at-all/", headers=bob)
    assert hidden_status == missing_status == 404
    assert hidden_page == missing_page
    assert stack.http_get(f"/rooms/{slug}/", headers={"Cookie": cookie_header(sessions["alice"])})[0] == 200


# --- (j) zero-width-only text is empty ------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("via", [0, 1], ids=["daphne", "uvicorn"])
async def test_zero_width_only_text_is_empty(stack, sessions, via):
    slug = unique("blank")
    stack.room_create(slug)
    tab = client_for(stack, sessions, "erin", slug, via=via)
    await tab.connect()
    for text in ["\u200b" * 4000, "\u2060\ufeff", "\u200b \u200c\n\u200d\u2063", "\u3164\u2800", "\u202e\u200f"]:
        answer = await tab.say(text)
        assert answer.get("type") == "error" and answer["code"] == "bad_request", (text[:5], answer)
    visible = await tab.say("\u200bvisible")
    assert visible["text"] == "\u200bvisible"
    await tab.close()
    assert [row["text"] for row in db_rows(stack, slug)] == ["\u200bvisible"]
