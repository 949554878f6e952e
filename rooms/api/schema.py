"""The OpenAPI 3.1 document of the API, served at ``/api/v1/schema.json``.

Written by hand next to the views it describes; ``tests/test_api.py`` checks
that it validates and that every URL in ``rooms/api/urls.py`` is in it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _retry_after(description: str) -> dict[str, Any]:
    response = _error(description)
    response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


COMMON_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "429": {"$ref": "#/components/responses/RateLimited"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}

SLUG = {
    "name": "slug",
    "in": "path",
    "required": True,
    "description": "The room's slug. A private room you may not open answers 404, like a missing one.",
    "schema": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"},
}
REPLY_ID = {
    "name": "reply_id",
    "in": "path",
    "required": True,
    "description": "The reply's message id.",
    "schema": {"type": "integer", "minimum": 1},
}
TOKEN_ONLY = [{"bearer": []}]
TOKEN_OR_SESSION = [{"bearer": []}, {"session": []}]


def _message_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The message object of the WebSocket protocol (docs/protocol.md), unchanged.",
        "required": [
            "id",
            "seq",
            "client_id",
            "author",
            "role",
            "text",
            "html",
            "created",
            "status",
            "edited",
            "deleted",
            "reply_to",
            "mentions",
        ],
        "properties": {
            "id": {"type": "integer"},
            "seq": {"type": "integer", "description": "Per room, 1, 2, 3... with no holes."},
            "client_id": {"type": ["string", "null"]},
            "author": {"type": "string"},
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "text": {"type": "string", "description": "Raw Markdown."},
            "html": {"type": "string", "description": "Server-rendered, sanitized HTML."},
            "created": {"type": "string", "format": "date-time"},
            "status": {"type": "string", "enum": ["complete", "streaming", "cancelled", "error", "interrupted"]},
            "edited": {"type": ["string", "null"], "format": "date-time"},
            "deleted": {"type": "boolean"},
            "reply_to": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["id", "author", "excerpt"],
                        "properties": {
                            "id": {"type": "integer"},
                            "author": {"type": "string"},
                            "excerpt": {"type": "string"},
                        },
                    },
                ]
            },
            "mentions": {"type": "array", "items": {"type": "string"}},
            "bot": {"type": "boolean", "description": "Present (true) when a bot account wrote it."},
            "in_reply_to": {"type": ["integer", "null"], "description": "Replies: the message that asked."},
            "model": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "integer"}},
            "error": {"type": "string"},
            "cancelled_by": {"type": "string"},
            "finish_reason": {"type": "string"},
            "private": {"type": "boolean"},
        },
    }


def document(request: HttpRequest | None = None) -> dict[str, Any]:
    server = request.build_absolute_uri("/api/v1") if request is not None else "/api/v1"
    limit = settings.CHAT_HISTORY_MAX
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Chatsite API",
            "version": VERSION,
            "description": (
                "Rooms beyond the browser: REST, a resumable Server-Sent Events stream, bots that stream "
                "replies, signed outgoing webhooks. Errors are {code, detail}. See docs/api.md."
            ),
        },
        "servers": [{"url": server}],
        "security": TOKEN_ONLY,
        "paths": {
            "/me": {
                "get": {
                    "operationId": "me",
                    "summary": "Who the token acts as",
                    "security": TOKEN_OR_SESSION,
                    "responses": {"200": _json(_ref("Me"), "The account"), **COMMON_ERRORS},
                }
            },
            "/rooms/": {
                "get": {
                    "operationId": "roomsList",
                    "summary": "The rooms you may open",
                    "security": TOKEN_OR_SESSION,
                    "responses": {"200": _json(_ref("RoomList"), "Visible rooms, by name"), **COMMON_ERRORS},
                }
            },
            "/rooms/{slug}/messages": {
                "parameters": [SLUG],
                "get": {
                    "operationId": "messagesList",
                    "summary": "A page of messages, oldest first",
                    "description": (
                        "Without after/before: the newest `limit`. `after`: messages with a greater id (and "
                        "replies that finished, rows edited since: a resume), the oldest `limit` of them. "
                        "`before`: the newest `limit` with a smaller id. Bounded like a socket's history page: "
                        "a page cut short by size says has_more."
                    ),
                    "security": TOKEN_OR_SESSION,
                    "parameters": [
                        {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": limit, "default": 50},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("MessagePage"), "The page"),
                        "404": {"$ref": "#/components/responses/NotFound"},
                        **COMMON_ERRORS,
                    },
                },
                "post": {
                    "operationId": "messagesPost",
                    "summary": "Post a message",
                    "description": (
                        "Validated, rate-limited (CHAT_RATE_LIMIT, shared with the user's sockets) and "
                        "idempotent by client_id exactly like a socket's message.send; mentions of the room's "
                        "assistants ask them."
                    ),
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("MessagePost")}}},
                    "responses": {
                        "201": _json(_ref("Message"), "Created"),
                        "200": _json(_ref("Message"), "A repeated client_id: the message it made the first time"),
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        "409": _error("The client_id was used for a different text"),
                        "413": _error("text over CHAT_MAX_MESSAGE_CHARS (too_long) or a body over API_MAX_BODY_BYTES"),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/rooms/{slug}/events": {
                "parameters": [SLUG],
                "get": {
                    "operationId": "roomEvents",
                    "summary": "The room's events as Server-Sent Events, resumable",
                    "description": (
                        "Every frame of the WebSocket protocol as `event: <type>` / `data: <JSON>`; events that "
                        "move the room's state carry `id: <cursor>`. Reconnect with Last-Event-ID (or ?after=) "
                        "to get every missed event once, in order (replayed from the database), then `ready`, "
                        "then live events. A `: keep-alive` comment every 15 s. Live only: presence, typing, "
                        "assistant.queued, notify, private replies."
                    ),
                    "security": TOKEN_OR_SESSION,
                    "parameters": [
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "schema": {"type": "string"},
                            "description": "The id of the last event received (wins over ?after).",
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "An event id, or a room seq: everything after it.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "404": {"$ref": "#/components/responses/NotFound"},
                        **COMMON_ERRORS,
                    },
                },
            },
            "/rooms/{slug}/replies": {
                "parameters": [SLUG],
                "post": {
                    "operationId": "replyStart",
                    "summary": "A bot starts a streaming reply",
                    "description": "Bot accounts only. Every tab gets assistant.start with the bot's name.",
                    "requestBody": {"content": {"application/json": {"schema": _ref("ReplyStart")}}},
                    "responses": {
                        "201": _json(_ref("Reply"), "The reply, streaming"),
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        **COMMON_ERRORS,
                    },
                },
            },
            "/rooms/{slug}/replies/{reply_id}/cancel": {
                "parameters": [SLUG, REPLY_ID],
                "post": {
                    "operationId": "replyCancel",
                    "summary": "Stop a streaming reply (as assistant.cancel)",
                    "responses": {
                        "202": _json(_ref("Cancelling"), "Stopping: the reply ends cancelled within a second"),
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        **COMMON_ERRORS,
                    },
                },
            },
            "/replies/{reply_id}/deltas": {
                "parameters": [REPLY_ID],
                "post": {
                    "operationId": "replyDelta",
                    "summary": "A bot's next piece of its reply",
                    "description": (
                        "seq counts from 1 per reply; a repeated seq is ignored (duplicate: true), a gap is 409 "
                        "gap. Coalesced for the room like the assistant's deltas. An empty text keeps the reply "
                        "alive (the sweeper ends a reply silent for ASSISTANT_STALE_SECONDS)."
                    ),
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Delta")}}},
                    "responses": {
                        "200": _json(_ref("DeltaAccepted"), "Accepted (or a repeat, ignored)"),
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        "409": _error("cancelled (stopped from a tab), ended (interrupted...), or gap"),
                        "413": _error("A delta or the whole reply is too long"),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/replies/{reply_id}/end": {
                "parameters": [REPLY_ID],
                "post": {
                    "operationId": "replyEnd",
                    "summary": "A bot ends its reply",
                    "requestBody": {"content": {"application/json": {"schema": _ref("End")}}},
                    "responses": {
                        "200": _json(_ref("Reply"), "The final reply (also when this end was already made)"),
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        "409": _error("cancelled or ended otherwise"),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/schema.json": {
                "get": {
                    "operationId": "schema",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (manage.py createapitoken, or the API tokens page).",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "sessionid",
                    "description": "The site's session cookie: reads only (GET).",
                },
            },
            "headers": {
                "RetryAfter": {"description": "Seconds to wait", "schema": {"type": "integer"}},
            },
            "responses": {
                "BadRequest": _error("bad_json, bad_request"),
                "Unauthorized": _error("unauthorized (no token) or invalid_token (wrong, revoked)"),
                "Forbidden": _error("forbidden"),
                "NotFound": _error("not_found: no such room (or one you may not see), reply or message"),
                "RateLimited": _retry_after("rate_limited"),
                "Unavailable": _retry_after("unavailable: the database or Redis is away for a moment"),
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "detail"],
                    "properties": {"code": {"type": "string"}, "detail": {"type": "string"}},
                },
                "Message": _message_schema(),
                "Me": {
                    "type": "object",
                    "required": ["username", "bot", "token"],
                    "properties": {
                        "username": {"type": "string"},
                        "bot": {"type": "boolean"},
                        "token": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "type": "object",
                                    "properties": {"name": {"type": "string"}, "prefix": {"type": "string"}},
                                },
                            ]
                        },
                    },
                },
                "Room": {
                    "type": "object",
                    "required": ["slug", "name", "private", "last_seq", "unread", "mentioned", "assistants"],
                    "properties": {
                        "slug": {"type": "string"},
                        "name": {"type": "string"},
                        "private": {"type": "boolean"},
                        "last_seq": {"type": "integer"},
                        "unread": {"type": "integer"},
                        "mentioned": {"type": "boolean"},
                        "assistants": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"name": {"type": "string"}, "model": {"type": "string"}},
                            },
                        },
                    },
                },
                "RoomList": {
                    "type": "object",
                    "required": ["rooms"],
                    "properties": {"rooms": {"type": "array", "items": _ref("Room")}},
                },
                "MessagePage": {
                    "type": "object",
                    "required": ["messages", "has_more"],
                    "properties": {
                        "messages": {"type": "array", "items": _ref("Message")},
                        "has_more": {"type": "boolean"},
                    },
                },
                "MessagePost": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {
                        "text": {"type": "string", "minLength": 1, "maxLength": settings.CHAT_MAX_MESSAGE_CHARS},
                        "client_id": {"type": "string", "minLength": 1, "maxLength": 64},
                        "reply_to": {"type": "integer", "description": "A message of this room to quote"},
                    },
                },
                "ReplyStart": {
                    "type": "object",
                    "properties": {"in_reply_to": {"type": "integer", "description": "The message it answers"}},
                },
                "Reply": {
                    "type": "object",
                    "required": ["reply_id", "message"],
                    "properties": {"reply_id": {"type": "integer"}, "message": _ref("Message")},
                },
                "Cancelling": {
                    "type": "object",
                    "required": ["reply_id", "status"],
                    "properties": {"reply_id": {"type": "integer"}, "status": {"const": "cancelling"}},
                },
                "Delta": {
                    "type": "object",
                    "required": ["text", "seq"],
                    "properties": {
                        "text": {"type": "string", "maxLength": 20000},
                        "seq": {"type": "integer", "minimum": 1},
                    },
                },
                "DeltaAccepted": {
                    "type": "object",
                    "required": ["reply_id", "seq", "duplicate"],
                    "properties": {
                        "reply_id": {"type": "integer"},
                        "seq": {"type": "integer", "description": "The last delta seq accepted"},
                        "duplicate": {"type": "boolean"},
                    },
                },
                "End": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["complete", "error"], "default": "complete"},
                        "error": {"type": "string", "maxLength": 300},
                    },
                },
            },
        },
    }
