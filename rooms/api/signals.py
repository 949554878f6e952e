"""What the API hooks into the rest of the site, by signals (connected from
``rooms.apps``):

- a message written by a bot account is marked (``Message.author_bot``) as it
  is created, from the flag the API's authentication put on the user: no
  query per message;
- every new message is checked against the room's webhooks inside its own
  transaction, so a delivery is recorded exactly when the message commits;
- a revoked or deleted token ends its open event streams on every process.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from .. import events
from ..models import Message
from ..realtime import group_send_safe, user_group
from . import webhooks
from .models import ApiToken, Webhook

logger = logging.getLogger(__name__)


@receiver(pre_save, sender=Message)
def message_mark_bot(sender: Any, instance: Message, **kwargs: Any) -> None:
    if not instance._state.adding or instance.author_bot or instance.author_id is None:
        return
    author = instance._state.fields_cache.get("author")
    if getattr(author, "_chat_is_bot", False):
        instance.author_bot = True


@receiver(post_save, sender=Message)
def message_webhooks(sender: Any, instance: Message, created: bool, **kwargs: Any) -> None:
    if created:
        webhooks.deliveries_enqueue(instance)


@receiver(post_save, sender=Webhook)
@receiver(post_delete, sender=Webhook)
def webhooks_changed(sender: Any, **kwargs: Any) -> None:
    webhooks.targets_forget()


def _tell(group: str, message: dict[str, Any]) -> None:
    def send() -> None:
        try:
            async_to_sync(group_send_safe)(group, message)
        except Exception:
            logger.warning("could not tell %s that a token was revoked", group, exc_info=True)

    transaction.on_commit(send)


@receiver(post_save, sender=ApiToken)
def token_revoked(sender: Any, instance: ApiToken, created: bool, **kwargs: Any) -> None:
    if not created and instance.revoked is not None:
        _tell(user_group(instance.user_id), {"type": events.API_TOKEN_REVOKED, "token_id": instance.pk})


@receiver(post_delete, sender=ApiToken)
def token_deleted(sender: Any, instance: ApiToken, **kwargs: Any) -> None:
    _tell(user_group(instance.user_id), {"type": events.API_TOKEN_REVOKED, "token_id": instance.pk})
