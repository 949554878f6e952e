"""The HTTP API: tokens, REST, the SSE event stream, bots that stream, webhooks.

Inside:
- ``models``: API tokens (only a hash stored), user profiles (``is_bot``), the
  state of a bot's streaming reply, webhooks and their deliveries (app label
  ``rooms``, imported at the end of ``rooms.models``);
- ``auth``: ``Authorization: Bearer`` (or the session cookie, for reads);
- ``views``: the REST endpoints and the API tokens page;
- ``sse``: ``GET /api/v1/rooms/<slug>/events``, resumable by ``Last-Event-ID``;
- ``bots``: replies streamed by a bot through the API;
- ``webhooks``: signed outgoing webhooks, delivered by a background task;
- ``schema``: the OpenAPI 3.1 document at ``/api/v1/schema.json``.

docs/api.md describes all of it.
"""
