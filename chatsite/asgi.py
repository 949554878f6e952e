"""ASGI entry point: HTTP through Django, WebSockets through Channels.

Sockets must come from the site's own origin (scheme, host and port) or a
trusted one, and carry a session; the consumer refuses anonymous ones with 4401.
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from rooms.api.asgi import api_http  # noqa: E402
from rooms.routing import websocket_urlpatterns  # noqa: E402
from rooms.socketauth import OriginValidator, SocketAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        # The API's event stream is answered before Django, and every process
        # delivers outgoing webhooks (rooms/api/asgi.py).
        "http": api_http(django_asgi_app),
        "websocket": OriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns))),
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
