"""Loaded with ``-p`` before pytest-django reads settings: the environment the
suite's own process runs under. Child processes (daphne) get theirs from the
fixtures that start them."""

import os
import tempfile

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-0123456789")
os.environ.setdefault("DJANGO_DEBUG", "0")
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("OPENAI_API_KEY", "")
os.environ.setdefault("ASSISTANT_DEMO_DELAY_MS", "1")
# Presence frames go out as soon as a socket joins, so protocol tests see them
# in a fixed order (the coalescing itself is timed by the system tests).
os.environ.setdefault("PRESENCE_COALESCE_MS", "0")
# The in-process suite uses the in-memory layer; system tests start their own Redis.
os.environ.pop("REDIS_URL", None)
# Whitenoise wants STATIC_ROOT to exist; the in-process suite never collects into it.
os.environ.setdefault("DJANGO_STATIC_ROOT", tempfile.mkdtemp(prefix="chat-static-"))
