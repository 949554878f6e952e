"""Pages, forms, the management command and production settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.management import call_command
from django.urls import reverse

from rooms.models import Membership, Room

pytestmark = pytest.mark.django_db


def test_anonymous_users_are_sent_to_log_in(client):
    for url in ["/", "/rooms/anything/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_signup_logs_in_and_lands_on_rooms(client):
    response = client.post(
        reverse("signup"),
        {"username": "newbie", "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"},
    )
    assert response.status_code == 302 and response["Location"] == reverse("room_list")
    assert client.get(reverse("room_list")).status_code == 200


def test_signup_rejects_weak_password(client):
    response = client.post(reverse("signup"), {"username": "weak", "password1": "123", "password2": "123"})
    assert response.status_code == 200 and b"too short" in response.content


def test_create_room_from_the_list_page(client, make_user):
    user = make_user("creator")
    client.force_login(user)
    response = client.post(reverse("room_list"), {"name": "Book Club", "slug": "", "is_private": "on"})
    assert response.status_code == 302 and response["Location"] == "/rooms/book-club/"
    room = Room.objects.get(slug="book-club")
    assert room.is_private and room.created_by == user
    assert Membership.objects.filter(room=room, user=user).exists()
    # The same address again is a form error, not a crash.
    again = client.post(reverse("room_list"), {"name": "Book Club"})
    assert again.status_code == 200 and b"already exists" in again.content


def test_room_page_and_private_rooms(client, make_user, make_room):
    member, stranger = make_user("member"), make_user("stranger")
    room = make_room("hideout", is_private=True, members=[member])
    public = make_room("square")
    client.force_login(stranger)
    assert client.get(f"/rooms/{room.slug}/").status_code == 404  # invisible = missing
    assert client.get("/rooms/nope/").status_code == 404
    page = client.get(f"/rooms/{public.slug}/")
    assert page.status_code == 200
    assert b'id="room-config"' in page.content and b"<script>" not in page.content
    listing = client.get("/")
    assert b"Square" in listing.content and b"Hideout" not in listing.content
    client.force_login(member)
    assert client.get(f"/rooms/{room.slug}/").status_code == 200
    assert b"Hideout" in client.get("/").content


def test_pages_carry_security_headers(client, make_user):
    client.force_login(make_user())
    response = client.get("/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_createroom_command(make_user):
    make_user("ann")
    make_user("ben")
    call_command("createroom", "club", "--name", "The Club", "--private", "--member", "ann", "--member", "ben")
    room = Room.objects.get(slug="club")
    assert room.name == "The Club" and room.is_private
    assert sorted(room.members.values_list("username", flat=True)) == ["ann", "ben"]
    call_command("createroom", "club")  # idempotent
    assert Room.objects.filter(slug="club").count() == 1
    with pytest.raises(Exception, match="no user named"):
        call_command("createroom", "other", "--member", "ghost")


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["database"] == "ok"


def test_check_deploy_passes_with_production_settings(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "x" * 20 + "-production-like-secret-" + "y" * 30,
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_require_a_secret_key(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "0", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr
