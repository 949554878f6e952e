"""The HTTP API in-process: the OpenAPI document, tokens, the tokens page, the
event stream's cursor and ordering rules, webhook signing and address checks.
(The same API against real processes: tests/system/test_api.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver
from django.utils import timezone
from openapi_spec_validator import validate

from rooms import events
from rooms.api import schema, sse, webhooks
from rooms.api import urls as api_urls
from rooms.api.http import token_resolve
from rooms.api.models import ApiToken, UserProfile, token_digest
from rooms.api.sse import Cursor, Live, Session

# --- The OpenAPI document --------------------------------------------------------------


def _openapi_paths() -> set[str]:
    """Every API URL of rooms/api/urls.py as an OpenAPI path (relative to /api/v1)."""
    found = set()
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern | URLResolver)
        route = str(pattern.pattern)
        if not route.startswith("api/v1/"):
            continue
        found.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route.removeprefix("api/v1/")))
    return found


def test_the_openapi_document_validates_and_lists_every_endpoint():
    document = schema.document()
    validate(document)  # OpenAPI 3.1, by openapi-spec-validator
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == _openapi_paths()
    # Every endpoint of the issue, by its written URL.
    for path in (
        "/rooms/",
        "/rooms/{slug}/messages",
        "/rooms/{slug}/events",
        "/rooms/{slug}/replies",
        "/rooms/{slug}/replies/{reply_id}/cancel",
        "/replies/{reply_id}/deltas",
        "/replies/{reply_id}/end",
    ):
        assert path in document["paths"], path
    assert set(document["paths"]["/rooms/{slug}/messages"]) >= {"get", "post"}


@pytest.mark.django_db
def test_the_schema_is_served_without_a_token(client):
    response = client.get("/api/v1/schema.json")
    assert response.status_code == 200 and response.json()["info"]["title"] == "Chatsite API"
    assert response.json()["servers"] == [{"url": "http://testserver/api/v1"}]


# --- Tokens ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_tokens_are_stored_as_hashes_and_revoked_at_once(make_user):
    user = make_user("owner")
    row, token = ApiToken.issue(user, "laptop")
    assert token.startswith(f"chs_{row.key_id}_") and len(token) > 40
    assert row.digest == token_digest(token) and token not in (row.digest, row.key_id, row.name)
    assert token_resolve(token) == (row, "")
    assert token_resolve(token[:-1] + ("A" if token[-1] != "A" else "B"))[0] is None
    assert token_resolve(f"chs_{row.key_id}_")[0] is None
    assert token_resolve("chs_zz")[0] is None and token_resolve("")[0] is None
    row.revoked = timezone.now()
    row.save(update_fields=["revoked"])
    assert token_resolve(token) == (None, "the token was revoked")
    _other, fresh = ApiToken.issue(user)
    user.is_active = False
    user.save()
    assert token_resolve(fresh)[0] is None


@pytest.mark.django_db
def test_createapitoken_prints_the_token_once_and_makes_bots(make_user):
    make_user("human")
    out = StringIO()
    call_command("createapitoken", "human", "--name", "ci", stdout=out)
    token = out.getvalue().strip()
    assert token_resolve(token)[0].name == "ci"
    out = StringIO()
    call_command("createapitoken", "helper", "--bot", stdout=out)
    bot = token_resolve(out.getvalue().strip())[0].user
    assert bot.username == "helper" and not bot.has_usable_password()
    assert UserProfile.objects.get(user=bot).is_bot
    with pytest.raises(Exception, match="no user named"):
        call_command("createapitoken", "nobody", stdout=StringIO())


@pytest.mark.django_db
def test_the_api_tokens_page_makes_shows_once_and_revokes(client, make_user):
    user = make_user("pageuser")
    client.force_login(user)
    page = client.get("/account/api-tokens/")
    assert page.status_code == 200 and b"No tokens yet" in page.content
    assert b'href="/account/api-tokens/"' in client.get("/").content, "linked from the nav"
    assert b"<script" not in page.content and b"style=" not in page.content  # CSP: nothing inline
    made = client.post("/account/api-tokens/", {"action": "create", "name": "my bot"})
    token = re.search(rb'id="new-token">(chs_[^<]+)<', made.content).group(1).decode()
    assert token_resolve(token)[0].user == user
    again = client.get("/account/api-tokens/")
    assert token.encode() not in again.content and b"my bot" in again.content
    row = ApiToken.objects.get(user=user)
    other = make_user("someoneelse")
    foreign, _ = ApiToken.issue(other)
    refused = client.post("/account/api-tokens/", {"action": "revoke", "token": str(foreign.pk)})
    assert refused.status_code == 400 and token_resolve(_)[0] is not None
    client.post("/account/api-tokens/", {"action": "revoke", "token": str(row.pk)})
    assert token_resolve(token) == (None, "the token was revoked")


@pytest.mark.django_db
def test_rest_without_a_token_is_401_json(client):
    response = client.get("/api/v1/rooms/")
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"
    assert client.get("/api/v1/no/such").json()["code"] in ("unauthorized", "not_found")


# --- The event stream's cursor -------------------------------------------------------------


def test_cursor_round_trip_and_refusals():
    cursor = Cursor(seq=57, edited=1764370000123456, open={131: 0, 130: 4})
    assert cursor.format() == "57e1764370000123456r130:4r131:0"
    assert Cursor.parse(cursor.format()) == cursor
    bare = Cursor.parse("57")
    assert bare is not None and bare.seq == 57 and not bare.exact
    for bad in ("", "x", "57e", "57ex", "-1", "57e1r", "57e1r1", "1" * 25, "57e1r1:2junk"):
        assert Cursor.parse(bad) is None, bad


def _session(seq: int = 10, opened: dict[int, int] | None = None) -> Session:
    user = SimpleNamespace(pk=1, get_username=lambda: "me")
    session = Session(
        SimpleNamespace(pk=1, slug="r", name="R"), user, bot=False, token_id=None, session_key=None, cursor=None
    )
    session.cursor = Cursor(seq=seq, edited=100, open=dict(opened or {}))
    session.edited_floor = 100
    return session


def _row(kind: str, seq: int, **fields: object) -> Live:
    return Live(kind, f'{{"type":"{kind}","seq":{seq}}}', row_seq=seq, **fields)  # type: ignore[arg-type]


def _delta(reply: int, dseq: int) -> Live:
    return Live(events.ASSISTANT_DELTA, f'{{"r":{reply},"d":{dseq}}}', reply_id=reply, dseq=dseq)


def _feed(session: Session, *lives: Live) -> list[str]:
    out: list[str] = []
    for live in lives:
        session.handle(live, out)
    return out


def test_rows_are_delivered_in_seq_order_once():
    session = _session(seq=10)
    out = _feed(session, _row("message", 12, message_id=12), _row("message", 10), _row("message", 9))
    assert out == [] and session.gap_due() is not None, "12 waits for 11; 10 and 9 are old"
    out = _feed(session, _row("message", 11, message_id=11), _row("message", 12, message_id=12))
    assert [line.split("\n")[1] for line in out] == ["id: 11e100", "id: 12e100"]
    assert session.held_rows == {}


def test_deltas_wait_for_their_start_and_each_other():
    session = _session(seq=10)
    out = _feed(session, _delta(11, 2), _delta(11, 1))
    assert out == [], "the reply's start has not come"
    out = _feed(session, _row(events.ASSISTANT_START, 11, reply_id=11))
    assert [line.split("\n")[0] for line in out] == [
        "event: assistant.start",
        "event: assistant.delta",
        "event: assistant.delta",
    ]
    assert session.cursor.format() == "11e100r11:2"
    out = _feed(session, _delta(11, 2), _delta(11, 4))
    assert out == [] and session.held_deltas == {11: {4: session.held_deltas[11][4]}}
    out = _feed(session, _delta(11, 3))
    assert len(out) == 2 and session.cursor.open == {11: 4}
    end = Live(events.ASSISTANT_END, "{}", row_seq=11, reply_id=11)
    assert len(_feed(session, end)) == 1 and session.cursor.format() == "11e100"
    assert _feed(session, end, _delta(11, 5)) == [], "a second end, a late delta: dropped"


def test_an_update_waits_for_its_row_and_older_states_are_dropped():
    session = _session(seq=10)
    update = Live(events.MESSAGE_UPDATE, "{}", row_seq=11, message_id=11, edited=200)
    assert _feed(session, update) == []
    out = _feed(session, _row("message", 11, message_id=11))
    assert [line.split("\n")[0] for line in out] == ["event: message", "event: message.update"]
    assert session.cursor.edited == 200
    stale = Live(events.MESSAGE_UPDATE, "{}", row_seq=5, message_id=5, edited=90)
    assert _feed(session, stale) == [], "older than the stream's start"
    assert len(_feed(session, Live(events.MESSAGE_UPDATE, "{}", row_seq=5, message_id=5, edited=300))) == 1
    assert _feed(session, Live(events.MESSAGE_UPDATE, "{}", row_seq=5, message_id=5, edited=300)) == []


def test_live_only_events_carry_no_id():
    session = _session()
    out = _feed(
        session,
        Live(events.TYPING, '{"t":1}', username="someone"),
        Live(events.TYPING, '{"t":2}', username="me"),
        Live(events.PRESENCE, '{"p":1}'),
    )
    assert out == ['event: typing\ndata: {"t":1}\n\n', 'event: presence\ndata: {"p":1}\n\n']


def test_a_sync_that_shows_a_lost_end_or_row_asks_for_repair():
    session = _session(seq=10, opened={7: 3})
    _feed(session, Live(sse.SYNC, row_seq=10, streaming=(7,)))
    assert session.gap_due() is None
    _feed(session, Live(sse.SYNC, row_seq=10, streaming=()))
    assert session.gap_due() is not None and session.suspect == {7}


# --- Webhooks ------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_body():
    body = b'{"type":"message"}'
    assert webhooks.signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("2002:7f00:1::", True),  # 6to4 around 127.0.0.1
    ],
)
def test_address_refusal(address, refused):
    assert (webhooks.address_refusal(address) is not None) is refused


def test_a_host_is_pinned_to_the_address_checked(monkeypatch, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    answers = {"hooks.example.com": ["93.184.216.34"], "rebind.example.com": ["93.184.216.34", "127.0.0.1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(webhooks, "resolve", resolve)
    target = asyncio.run(webhooks.destination("https://hooks.example.com:8443/in?x=1"))
    assert target.url == "https://93.184.216.34:8443/in?x=1"
    assert target.headers == {"Host": "hooks.example.com:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example.com"}
    with pytest.raises(
        webhooks.DeliveryError, match=re.escape("refused: rebind.example.com resolves to 127.0.0.1 is a loopback")
    ):
        asyncio.run(webhooks.destination("http://rebind.example.com/"))
    for url in ("ftp://hooks.example.com/", "http://user:pw@hooks.example.com/", "http:///nohost"):
        with pytest.raises(webhooks.DeliveryError):
            asyncio.run(webhooks.destination(url))
    settings.WEBHOOK_ALLOW_PRIVATE = True
    assert asyncio.run(webhooks.destination("http://127.0.0.1:9/")).url == "http://127.0.0.1:9/"


def test_retries_back_off_exponentially_to_a_cap(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 10
    settings.WEBHOOK_RETRY_MAX_SECONDS = 100
    delays = [webhooks.retry_delay(n) for n in range(1, 7)]
    for delay, expected in zip(delays, [10, 20, 40, 80, 100, 100], strict=True):
        assert expected * 0.9 <= delay <= expected * 1.1


@pytest.mark.django_db
def test_deliveries_are_recorded_with_the_message(make_user, make_room):
    from rooms.api.models import Webhook, WebhookDelivery
    from rooms.services import message_create

    author, bot = make_user("writer"), make_user("hookbot")
    room = make_room("hooked")
    Webhook.objects.create(room=room, url="http://example.com/all", secret="a")
    Webhook.objects.create(room=room, url="http://example.com/mention", secret="b", event="mention", bot=bot)
    webhooks.targets_forget()
    plain, _ = message_create(room=room, user=author, text="plain")
    mention, _ = message_create(room=room, user=author, text="hi @hookbot")
    rows = list(WebhookDelivery.objects.order_by("id").values_list("message_id", "event"))
    assert rows == [(plain.pk, "message"), (mention.pk, "message"), (mention.pk, "mention")]
    body = WebhookDelivery.objects.filter(message=mention, event="mention").get().body
    assert '"trigger":"mention"' in body and '"mentions":["hookbot"]' in body


@pytest.mark.django_db
def test_the_admin_lists_and_revokes_tokens_and_shows_deliveries(client, make_user, make_room):
    from django.contrib.auth import get_user_model

    from rooms.api.models import Webhook, WebhookDelivery

    admin = get_user_model().objects.create_superuser("root", "root@example.com", "correct-horse-battery")
    client.force_login(admin)
    row, token = ApiToken.issue(make_user("tokenowner"), "deploy")
    listing = client.get("/admin/rooms/apitoken/")
    assert (
        listing.status_code == 200 and row.prefix.encode() in listing.content and token.encode() not in listing.content
    )
    assert client.get("/admin/rooms/apitoken/add/").status_code == 403, "tokens are never made in the admin"
    client.post("/admin/rooms/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    assert token_resolve(token) == (None, "the token was revoked")
    hook = Webhook.objects.create(room=make_room("adminhooks"), url="http://example.com/", secret="s")
    delivery = WebhookDelivery.objects.create(
        webhook=hook,
        event="message",
        body="{}",
        attempts=2,
        log=[{"at": "t", "status": 500, "error": "HTTP 500", "ms": 3}],
    )
    assert client.get(f"/admin/rooms/webhook/{hook.pk}/change/").status_code == 200
    page = client.get(f"/admin/rooms/webhookdelivery/{delivery.pk}/change/")
    assert page.status_code == 200 and b"HTTP 500" in page.content
    assert client.get("/admin/rooms/userprofile/").status_code == 200
