"""Probe the app's ``/healthz`` endpoint: exit 0 when it answers 200, else 1.

Used as the container health check (``python -m deploy.healthcheck``) and by
the local stack to wait for readiness. Standard library only: it runs every few
seconds inside the container and must not pay for importing Django.

The probe talks to daphne directly, so it must pass Django's host validation
and must not be bounced by ``SECURE_SSL_REDIRECT``: it sends a ``Host`` taken
from ``DJANGO_ALLOWED_HOSTS`` and ``X-Forwarded-Proto: https`` (the app trusts
that header because, in every deployment, only the proxy can reach daphne).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import urllib.parse

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def probe_host_from_allowed_hosts(allowed_hosts: str) -> str:
    """Pick a Host header Django will accept from a DJANGO_ALLOWED_HOSTS value."""
    for entry in (item.strip() for item in allowed_hosts.split(",")):
        if not entry or entry == "*":
            continue
        # ".example.com" allows every subdomain, the bare domain included.
        return entry.lstrip(".")
    return "localhost"


def healthz_probe(url: str, host: str | None = None, timeout: float = 3.0) -> tuple[int, str]:
    """GET ``url`` and return (status, body); status 0 means no HTTP answer at all."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    headers = {"X-Forwarded-Proto": "https", "Accept": "application/json"}
    if host:
        headers["Host"] = host
    try:
        connection.request("GET", parts.path or "/", headers=headers)
        response = connection.getresponse()
        return response.status, response.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)
    host = probe_host_from_allowed_hosts(os.environ.get("DJANGO_ALLOWED_HOSTS", ""))
    status, body = healthz_probe(url, host=host)
    if status == 200:
        return 0
    # The health check's output lands in `docker inspect`: say why, briefly.
    try:
        detail = json.dumps(json.loads(body))
    except ValueError:
        detail = body[:200]
    sys.stderr.write(f"unhealthy: HTTP {status} {detail}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
