"""The multi-process stack for system and fault tests.

The real code lives in ``deploy/stack.py`` (shared with ``deploy/localstack.py``);
this module adds what tests need on top: nginx installed on demand (Debian,
root), users, rooms, a logged-in session and the headers a browser's socket
would send.

    from tests.stack import Stack

    with Stack(tmp_path, daphne_count=2) as stack:
        stack.user_create("alice")
        stack.room_create("demo")
        cookies = stack.login("alice")
        async with websockets.connect(f"{stack.ws_url}/ws/rooms/demo/",
                                      additional_headers=stack.ws_headers(cookies)) as ws:
            ...
        stack.kill_redis(); stack.start_redis()
        assert "Traceback" not in stack.logs("daphne1")
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from deploy.stack import (
    ManagedProcess,
    StackError,
    port_free,
    redis_binary_find,
    redis_command,
)
from deploy.stack import Stack as _DeployStack

__all__ = ["ManagedProcess", "Stack", "StackError", "port_free", "redis_binary_find", "redis_command"]

DEFAULT_PASSWORD = "correct-horse-battery-staple"
_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"')


class Stack(_DeployStack):
    """``deploy.stack.Stack`` that installs nginx when missing and can log users in."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        daphne_count: int = 2,
        database_url: str | None = None,
        env_overrides: Mapping[str, str] | None = None,
        nginx: bool = True,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("install_nginx", True)
        super().__init__(
            Path(workdir),
            daphne_count=daphne_count,
            database_url=database_url,
            env_overrides=env_overrides,
            nginx=nginx,
            **kwargs,  # type: ignore[arg-type]
        )

    # -- fixtures through manage.py -------------------------------------------

    def user_create(self, username: str, password: str = DEFAULT_PASSWORD, superuser: bool = False) -> None:
        """Create a user (``createsuperuser --noinput`` reads the password from the env)."""
        args = ["createsuperuser", "--noinput", "--username", username, "--email", f"{username}@example.com"]
        if superuser:
            self.manage(*args, env={"DJANGO_SUPERUSER_PASSWORD": password})
            return
        code = (
            "from django.contrib.auth import get_user_model;"
            f"get_user_model().objects.create_user(username={username!r}, password={password!r})"
        )
        self.manage("shell", "-c", code)

    def room_create(self, slug: str, *args: str) -> None:
        """``manage.py createroom slug [--name N] [--private] [--member U ...]``."""
        self.manage("createroom", slug, *args)

    # -- HTTP session --------------------------------------------------------

    def login(self, username: str, password: str = DEFAULT_PASSWORD, base_url: str | None = None) -> dict[str, str]:
        """Log in through the login form; return the cookies (``sessionid``, ``csrftoken``).

        Cookies are handled by hand: a cookie jar would also work now that the
        stack turns Secure cookies off, but explicit is easier to debug.
        """
        base = base_url or self.url
        status, headers, body = self._http("GET", base, "/accounts/login/", {})
        if status != 200:
            raise StackError(f"GET /accounts/login/ answered {status}")
        cookies = _cookies_from(headers)
        match = _CSRF_INPUT.search(body)
        if not match or "csrftoken" not in cookies:
            raise StackError("login page has no CSRF token")
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": match.group(1)}
        )
        status, headers, _ = self._http(
            "POST",
            base,
            "/accounts/login/",
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": _cookie_header(cookies),
                "Origin": base,
                "Referer": f"{base}/accounts/login/",
            },
            form,
        )
        cookies.update(_cookies_from(headers))
        if status != 302 or "sessionid" not in cookies:
            raise StackError(f"login as {username!r} failed: HTTP {status}")
        return cookies

    def ws_headers(self, cookies: Mapping[str, str], origin: str | None = None) -> dict[str, str]:
        """Headers a browser on this site sends with its WebSocket handshake."""
        return {"Cookie": _cookie_header(cookies), "Origin": origin or self.origin}

    def _http(
        self, method: str, base: str, path: str, headers: Mapping[str, str], body: str | None = None
    ) -> tuple[int, list[tuple[str, str]], str]:
        parts = urllib.parse.urlsplit(base)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        try:
            connection.request(method, path, body=body, headers=dict(headers))
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read().decode("utf-8", "replace")
        finally:
            connection.close()


def _cookies_from(headers: list[tuple[str, str]]) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == "set-cookie":
            key, _, rest = value.partition("=")
            cookies[key.strip()] = rest.split(";", 1)[0]
    return cookies


def _cookie_header(cookies: Mapping[str, str]) -> str:
    return "; ".join(f"{key}={value}" for key, value in cookies.items())
