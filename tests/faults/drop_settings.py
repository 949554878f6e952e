"""Production settings with the message-dropping channel layer (fault test 4)."""

from chatsite.settings import *  # noqa: F403
from chatsite.settings import CHANNEL_LAYERS as _LAYERS

CHANNEL_LAYERS = {"default": {**_LAYERS["default"], "BACKEND": "tests.faults.droplayer.DroppingPubSubLayer"}}
