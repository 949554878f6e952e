"""Django settings for chatsite.

This is the only module that reads the environment: everything else reads
``django.conf.settings``. See ``.env.example`` for every variable.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

logger = logging.getLogger("chatsite")

DEBUG = env.bool("DJANGO_DEBUG", default=False)

# Secure by default: without DEBUG the key must come from the environment.
if DEBUG:
    SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="dev-only-insecure-key-do-not-deploy")
else:
    SECRET_KEY = env.str("DJANGO_SECRET_KEY")

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rooms",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "chatsite.asgi.application"

# --- Database -------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
# Every wait on the database is bounded, so an unreachable or hanging database
# turns into errors the client sees (``unavailable``, 4503) within seconds:
# - DATABASE_CONNECT_TIMEOUT: opening a connection (libpq's connect_timeout);
# - DATABASE_STATEMENT_TIMEOUT_MS: one statement, enforced by the server (a lock
#   held elsewhere, an overloaded server); 0 turns it off (migrations);
# - DATABASE_POOL_TIMEOUT: waiting for a free connection of the pool;
# - DATABASE_CALL_TIMEOUT: one unit of socket work (rooms.db.db_run), enforced by
#   the client, which also covers a network that stopped answering; counted
#   from when a database thread takes the call;
# - DATABASE_QUEUE_TIMEOUT: how long a call may wait for a database thread
#   (a reconnect storm queues thousands of connects: they wait their turn
#   rather than being refused and retrying, which only adds handshakes).
DATABASE_CONNECT_TIMEOUT = env.int("DATABASE_CONNECT_TIMEOUT", default=3)
DATABASE_STATEMENT_TIMEOUT_MS = env.int("DATABASE_STATEMENT_TIMEOUT_MS", default=5000)
DATABASE_POOL_SIZE = env.int("DATABASE_POOL_SIZE", default=10)
DATABASE_POOL_TIMEOUT = env.float("DATABASE_POOL_TIMEOUT", default=3.0)
DATABASE_CALL_TIMEOUT = env.float("DATABASE_CALL_TIMEOUT", default=6.0)
DATABASE_QUEUE_TIMEOUT = env.float("DATABASE_QUEUE_TIMEOUT", default=30.0)
# Threads a server process runs socket database work on (rooms.db.db_run):
# several on PostgreSQL, so different sockets' round trips overlap (within the
# pool); one on SQLite, which writes one transaction at a time anyway.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock
    # at BEGIN, so a transaction never fails half-way on an upgrade.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": max(1, DATABASE_STATEMENT_TIMEOUT_MS // 1000) if DATABASE_STATEMENT_TIMEOUT_MS else 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Under ASGI every request runs in a thread of its own, and a persistent
    # connection opened there is never reused or closed (a leak per request):
    # SQLite opens a file, which is cheap, so connections are closed after use.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    # PostgreSQL: Django's psycopg 3 pool. Under ASGI each request runs in a
    # fresh thread; with CONN_MAX_AGE > 0 each one left a connection open until
    # the server refused everyone. The pool bounds a process to
    # DATABASE_POOL_SIZE connections whatever the traffic, and handing a
    # connection back is cheap, so sockets return theirs after every unit of work.
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options["pool"] = {
        "min_size": min(2, DATABASE_POOL_SIZE),
        "max_size": DATABASE_POOL_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT,
        # A connection the server dropped is found by the pool's check, not by
        # the request that happens to draw it.
        "max_idle": 300,
    }
    options["connect_timeout"] = DATABASE_CONNECT_TIMEOUT
    if DATABASE_STATEMENT_TIMEOUT_MS:
        options["options"] = f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}"
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASE_THREADS = env.int(
    "DATABASE_THREADS", default=1 if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else 4
)
# A pooled connection is checked before it is handed out (one round trip), so a
# connection broken by a database restart never reaches a request.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer --------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# Seconds a Redis command may take before we give up on it: a stopped Redis must
# turn into an error the client sees, never a hung send.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=2.0)
# "pubsub" (default): one PUBLISH per room event, fanned out in each process.
# "core": channels-redis's list-based layer, for comparison in the benchmarks.
CHANNEL_LAYER_KIND = env.str("CHANNEL_LAYER_KIND", default="pubsub")

if REDIS_URL:
    _redis_host = {
        "address": REDIS_URL,
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
    }
    if CHANNEL_LAYER_KIND == "core":
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [REDIS_URL],
                    # The backlog of a process's one hub channel (every room event
                    # for the process passes through it); beyond it channels-redis
                    # drops silently, which the seq/resume protocol repairs.
                    "capacity": env.int("CHANNEL_CAPACITY", default=10000),
                    # Undelivered messages older than this are garbage: clients
                    # resume from the database instead.
                    "expiry": env.int("CHANNEL_EXPIRY", default=30),
                    # Consumers re-add themselves every GROUP_REFRESH_SECONDS, so a
                    # long-lived socket never outlives its group membership.
                    "group_expiry": env.int("CHANNEL_GROUP_EXPIRY", default=86400),
                },
            }
        }
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [_redis_host]},
            }
        }
else:
    # One hub channel carries every room event of the process: a larger backlog
    # than the default 100.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 10000}}}

# How often each process re-adds its hub to its groups (the core layer forgets
# members after group_expiry, counted from group_add).
GROUP_REFRESH_SECONDS = env.int("GROUP_REFRESH_SECONDS", default=30)
# Each process refreshes its sockets' presence entries every
# PRESENCE_REFRESH_SECONDS; an entry not refreshed for PRESENCE_TTL_SECONDS
# belongs to a dead process and is pruned (and the room told) at the next
# refresh of any process in the room: a dead process's tabs leave within
# TTL + REFRESH.
PRESENCE_REFRESH_SECONDS = env.float("PRESENCE_REFRESH_SECONDS", default=5.0)
PRESENCE_TTL_SECONDS = env.int("PRESENCE_TTL_SECONDS", default=20)
# Presence changes of a room are announced at most this often per process
# (the latest state; joins in a burst become one frame).
PRESENCE_COALESCE_MS = env.int("PRESENCE_COALESCE_MS", default=150)
# Each process reads a boot marker from Redis every LAYER_HEALTH_INTERVAL,
# waiting at most LAYER_HEALTH_TIMEOUT. A refused connection, no answer for
# LAYER_OUTAGE_SECONDS, or a marker that changed (Redis restarted empty) closes
# that process's sockets with 4503; clients reconnect and resume from the
# database once an event the process publishes comes back to it.
LAYER_HEALTH_INTERVAL = env.float("LAYER_HEALTH_INTERVAL", default=0.5)
LAYER_HEALTH_TIMEOUT = env.float("LAYER_HEALTH_TIMEOUT", default=1.0)
LAYER_OUTAGE_SECONDS = env.float("LAYER_OUTAGE_SECONDS", default=2.0)
# The longest a frame handler waits on Redis (rate limits, presence) before it
# falls back to its stated policy (docs/deployment.md, "When Redis fails").
REDIS_HANDLER_TIMEOUT = env.float("REDIS_HANDLER_TIMEOUT", default=0.8)
# Garbage-collector thresholds of a server process (chatsite/asgi.py). Python's
# default (700, 10, 10) promotes whatever frames are in flight into the old
# generation many times a second, so a full collection over every socket's
# objects ran about once a second and stalled the loop for 100+ ms (the p99 of
# a fan-out). A larger young generation makes full collections rare.
GC_THRESHOLDS = tuple(env.list("GC_THRESHOLDS", cast=int, default=[100_000, 10, 10]))

# --- Chat limits ----------------------------------------------------------
_RATE_RE = re.compile(r"^(\d+)/(\d+)s$")


def _rate(value: str) -> tuple[int, int] | None:
    """Parse "20/10s" into (20, 10); "0" disables the limit."""
    value = value.strip()
    if value in ("", "0"):
        return None
    match = _RATE_RE.match(value)
    if not match:
        raise ValueError(f"rate must look like '20/10s' or '0', got {value!r}")
    return int(match.group(1)), int(match.group(2))


CHAT_RATE_LIMIT = _rate(env.str("CHAT_RATE_LIMIT", default="20/10s"))
# Failed log-ins per account name (case-insensitive) and per client address
# (an IPv6 client by its /64), and sign-ups (every attempt) per address. Over a
# limit the form answers 429 with Retry-After until the window ends, without
# checking the password. Shared by every process through Redis.
LOGIN_RATE_LIMIT = _rate(env.str("LOGIN_RATE_LIMIT", default="5/300s"))
LOGIN_ADDRESS_RATE_LIMIT = _rate(env.str("LOGIN_ADDRESS_RATE_LIMIT", default="20/300s"))
SIGNUP_RATE_LIMIT = _rate(env.str("SIGNUP_RATE_LIMIT", default="5/3600s"))
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=4000)
# The largest frame a client may send; bigger ones close the socket with 4413.
CHAT_MAX_FRAME_BYTES = env.int("CHAT_MAX_FRAME_BYTES", default=64 * 1024)
# The largest frame the server sends. Below the server's own cap
# (DAPHNE_MAX_MESSAGE_BYTES, 128 KiB: autobahn applies it to outgoing frames
# too): hello and history stop adding messages before it, and a single bigger
# frame goes out as chunk frames (docs/protocol.md).
CHAT_MAX_SEND_FRAME_BYTES = env.int("CHAT_MAX_SEND_FRAME_BYTES", default=96 * 1024)
# Sockets one user may have open at once, across processes (0: no cap); the
# next is closed with 4429.
CHAT_MAX_SOCKETS_PER_USER = env.int("CHAT_MAX_SOCKETS_PER_USER", default=20)
# A socket's typing frames are relayed at most once per this many seconds
# (the latest state wins; a flood of toggles is not a broadcast flood).
CHAT_TYPING_INTERVAL = env.float("CHAT_TYPING_INTERVAL", default=1.0)
# Sockets one process opens at once (rooms.admission): in a reconnect storm the
# rest wait their turn instead of all starting their round trips together.
CHAT_CONNECT_CONCURRENCY = env.int("CHAT_CONNECT_CONCURRENCY", default=32)
CHAT_HELLO_MESSAGES = 50
CHAT_RESUME_MAX = 500
CHAT_HISTORY_MAX = 100

# --- API ------------------------------------------------------------------
# docs/api.md. Requests per token (all endpoints, every process together; 0
# disables); messages posted also count against CHAT_RATE_LIMIT, like a socket's.
API_RATE_LIMIT = _rate(env.str("API_RATE_LIMIT", default="1200/60s"))
# The largest JSON body a request may carry (413 beyond it).
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=64 * 1024)
# SSE: a comment line this often keeps proxies from closing a quiet stream.
API_SSE_HEARTBEAT_SECONDS = env.float("API_SSE_HEARTBEAT_SECONDS", default=15.0)
# SSE streams one user may hold open on one server process (429 beyond it; 0: no cap).
API_SSE_MAX_PER_USER = env.int("API_SSE_MAX_PER_USER", default=20)
# Events a slow SSE reader may fall behind by before its stream is closed (it
# reconnects with Last-Event-ID and resumes from the database).
API_SSE_BACKLOG_MAX = env.int("API_SSE_BACKLOG_MAX", default=2000)
# Outgoing webhooks: deliveries to private, loopback, link-local or multicast
# addresses are refused unless this is on (tests, a trusted intranet).
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=5.0)
# Attempts per delivery, the first retry's delay (doubling after each failure,
# at most WEBHOOK_RETRY_MAX_SECONDS), deliveries in flight per process, and
# how often each process looks for due ones.
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=8)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=10.0)
WEBHOOK_RETRY_MAX_SECONDS = env.float("WEBHOOK_RETRY_MAX_SECONDS", default=3600.0)
WEBHOOK_CONCURRENCY = env.int("WEBHOOK_CONCURRENCY", default=4)
WEBHOOK_POLL_SECONDS = env.float("WEBHOOK_POLL_SECONDS", default=1.0)

# --- Assistant ------------------------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="") or None
ASSISTANT_MODEL = env.str("ASSISTANT_MODEL", default="gpt-4o-mini")
ASSISTANT_TIMEOUT_SECONDS = env.float("ASSISTANT_TIMEOUT_SECONDS", default=60.0)
ASSISTANT_CONNECT_TIMEOUT_SECONDS = env.float("ASSISTANT_CONNECT_TIMEOUT_SECONDS", default=10.0)
ASSISTANT_MAX_RETRIES = env.int("ASSISTANT_MAX_RETRIES", default=2)
ASSISTANT_CONTEXT_CHARS = env.int("ASSISTANT_CONTEXT_CHARS", default=12000)
ASSISTANT_CONTEXT_MESSAGES = env.int("ASSISTANT_CONTEXT_MESSAGES", default=50)
ASSISTANT_RATE_LIMIT = _rate(env.str("ASSISTANT_RATE_LIMIT", default="5/60s"))
ASSISTANT_MAX_CONCURRENT_PER_ROOM = env.int("ASSISTANT_MAX_CONCURRENT_PER_ROOM", default=1)
# Replies streaming at once in the whole site, across rooms and processes (0: no
# cap); further ones wait their turn, oldest room first.
ASSISTANT_MAX_CONCURRENT = env.int("ASSISTANT_MAX_CONCURRENT", default=8)
# Mentions waiting in one room; beyond it a mention is refused (rate_limited).
ASSISTANT_MAX_QUEUE_PER_ROOM = env.int("ASSISTANT_MAX_QUEUE_PER_ROOM", default=10)
ASSISTANT_FLUSH_MS = env.int("ASSISTANT_FLUSH_MS", default=50)
ASSISTANT_FLUSH_CHARS = env.int("ASSISTANT_FLUSH_CHARS", default=200)
# A streaming reply whose worker has not checked in for this long is marked
# interrupted (its process died). Workers check in every
# ASSISTANT_HEARTBEAT_SECONDS and each process sweeps every
# ASSISTANT_SWEEP_SECONDS, so a dead process's reply ends within about
# STALE + SWEEP seconds.
ASSISTANT_STALE_SECONDS = env.float("ASSISTANT_STALE_SECONDS", default=5.0)
ASSISTANT_HEARTBEAT_SECONDS = env.float("ASSISTANT_HEARTBEAT_SECONDS", default=1.5)
ASSISTANT_SWEEP_SECONDS = env.float("ASSISTANT_SWEEP_SECONDS", default=1.0)
ASSISTANT_DEMO_DELAY_MS = env.int("ASSISTANT_DEMO_DELAY_MS", default=30)
# API keys a room assistant may name (its "key env"): every environment variable
# whose name ends in _API_KEY. The database holds the name, never the key.
ASSISTANT_API_KEYS = {name: value for name, value in os.environ.items() if name.endswith("_API_KEY") and value}
# What replies cost: model -> dollars per million input and output tokens, e.g.
# {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}. A model not listed costs nothing
# that budgets in dollars can see (token budgets still count it).
ASSISTANT_PRICES = env.json("ASSISTANT_PRICES", default={"gpt-4o-mini": {"input": 0.15, "output": 0.6}})
# Budgets (0: none), per user (charged to who asked) and per room (rooms may
# override theirs in the admin), per UTC day and month, in tokens and dollars.
ASSISTANT_BUDGET_USER_DAILY_TOKENS = env.int("ASSISTANT_BUDGET_USER_DAILY_TOKENS", default=0)
ASSISTANT_BUDGET_USER_MONTHLY_TOKENS = env.int("ASSISTANT_BUDGET_USER_MONTHLY_TOKENS", default=0)
ASSISTANT_BUDGET_USER_DAILY_COST = env.float("ASSISTANT_BUDGET_USER_DAILY_COST", default=0.0)
ASSISTANT_BUDGET_USER_MONTHLY_COST = env.float("ASSISTANT_BUDGET_USER_MONTHLY_COST", default=0.0)
ASSISTANT_BUDGET_ROOM_DAILY_TOKENS = env.int("ASSISTANT_BUDGET_ROOM_DAILY_TOKENS", default=0)
ASSISTANT_BUDGET_ROOM_MONTHLY_TOKENS = env.int("ASSISTANT_BUDGET_ROOM_MONTHLY_TOKENS", default=0)
ASSISTANT_BUDGET_ROOM_DAILY_COST = env.float("ASSISTANT_BUDGET_ROOM_DAILY_COST", default=0.0)
ASSISTANT_BUDGET_ROOM_MONTHLY_COST = env.float("ASSISTANT_BUDGET_ROOM_MONTHLY_COST", default=0.0)

# --- Auth, sessions, security --------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "room_list"
LOGOUT_REDIRECT_URL = "login"

SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Secure cookies unless debugging. Plain-http test stacks on loopback turn them
# off explicitly; production never should.
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=SESSION_COOKIE_SECURE)
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Scripts only from our own static files: no inline script, no eval. Images only
# from ourselves, so a prompt-injected model cannot exfiltrate through <img>.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}

# --- i18n, static ---------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Logging --------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"}},
    "filters": {"exception_summary": {"()": "chatsite.logfilters.ExceptionSummary"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # The SDK's and httpx's DEBUG output can carry request headers.
        "openai": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "channels_redis.pubsub": {"filters": ["exception_summary"]},
        # A request with a Host outside ALLOWED_HOSTS (scanners send them all
        # day) is answered 400; Django logs it at ERROR with a traceback. One
        # WARNING line naming the host is enough.
        "django.security.DisallowedHost": {"filters": ["exception_summary"]},
    },
}

if not REDIS_URL:
    logger.warning(
        "REDIS_URL is not set: using the in-memory channel layer, which works in a "
        "single process only. Set REDIS_URL to run several server processes."
    )
