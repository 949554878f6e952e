"""A channel layer that loses messages on purpose (fault test 4).

``RedisPubSubChannelLayer`` with one change: 10% of group sends to room groups
vanish, as they would in a network partition or past ``capacity``. The
assistant's control group is left alone: a lost cancel is a different fault.
Each drop is logged, so a test knows exactly which events never went out.

Selected with ``DJANGO_SETTINGS_MODULE=tests.faults.drop_settings``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer

logger = logging.getLogger("tests.faults.droplayer")

DROP_RATE = 0.10
_random = random.Random()


class DroppingPubSubLayer(RedisPubSubChannelLayer):
    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if group.startswith("room.") and _random.random() < DROP_RATE:
            logger.warning("dropped group send to %s: kind=%s id=%s", group, message.get("kind"), message.get("id"))
            return
        # The pub/sub layer proxies its methods to a per-loop layer through
        # __getattr__, so there is no group_send on the class to call via super().
        await self._get_layer().group_send(group, message)
