"""Presence against a real Redis (a server of its own on a free port, never
the shared one): the keeper's refresh, in batches, puts back every entry of
this process after Redis lost its data."""

from __future__ import annotations

import subprocess
import time

import pytest

from deploy.stack import port_free, port_open, redis_binary_find, redis_command
from rooms import presence
from rooms.kv import kv_client

pytestmark = [pytest.mark.asyncio]


@pytest.fixture
def redis_port(tmp_path):
    port = port_free()
    proc = subprocess.Popen(
        [redis_binary_find(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open(port):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


async def test_refresh_puts_back_every_room_in_batches(redis_port, settings, monkeypatch):
    settings.REDIS_URL = f"redis://127.0.0.1:{redis_port}/0"
    monkeypatch.setattr(presence, "REFRESH_BATCH", 2)  # 5 rooms and 5 users: three round trips each
    monkeypatch.setattr(presence, "_mine", {})
    monkeypatch.setattr(presence, "_mine_sockets", {})
    for n in range(5):
        await presence.presence_join(9000 + n, 900 + n, f"user{n}", f"socket{n}")
    redis_command(redis_port, "FLUSHALL")  # Redis restarted empty
    assert redis_command(redis_port, "EXISTS", "chat:presence:9000") == 0
    await presence.presence_refresh()
    for n in range(5):
        assert redis_command(redis_port, "ZRANGE", f"chat:presence:{9000 + n}", 0, -1) == [f"user{n}|socket{n}"]
        assert redis_command(redis_port, "ZRANGE", f"chat:sockets:{900 + n}", 0, -1) == [f"socket{n}"]
    client = kv_client()
    assert client is not None
    await client.aclose()
