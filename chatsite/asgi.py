"""ASGI entry point: HTTP through Django, WebSockets through Channels.

Sockets must come from one of ALLOWED_HOSTS (Origin check) and carry a
session; the consumer refuses anonymous ones with 4401.
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from rooms.routing import websocket_urlpatterns  # noqa: E402
from rooms.socketauth import SocketAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)


def gc_tune() -> None:
    """Freeze what start-up built (imports, URL patterns, settings) out of the
    collector's sight and collect young objects less often; see GC_THRESHOLDS."""
    from django.conf import settings

    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.GC_THRESHOLDS)


gc_tune()
