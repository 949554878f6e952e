from typing import Any

from django.urls import path, re_path

from . import events
from .consumers import RoomConsumer
from .socketauth import socket_refuse


async def no_such_socket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any other websocket path: refused at the handshake (HTTP 403), where
    channels' router would raise and the server answer 500 with a traceback."""
    await socket_refuse(receive, send, events.CLOSE_NOT_FOUND, accept=False)


websocket_urlpatterns = [
    path("ws/rooms/<slug:slug>/", RoomConsumer.as_asgi()),
    re_path(r"", no_such_socket),
]
