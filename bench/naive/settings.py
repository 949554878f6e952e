"""Settings of the "naive" row: the Channels tutorial design, nothing tuned.

No database, no auth, no sessions: only what the tutorial chat consumer needs.
The channel layer is channels-redis's default `RedisChannelLayer` with its
default capacity and expiry, pointed at the benchmark's own redis-server.
"""

import os

SECRET_KEY = "bench-naive-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["daphne", "channels"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.naive.urls"
ASGI_APPLICATION = "bench.naive.asgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6380/0")]},
    }
}
# The fake OpenAI-wire server of S2.
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
