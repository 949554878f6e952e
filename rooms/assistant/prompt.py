"""What the model is shown: the assistant's system prompt, then the room's
messages within its context budget (through selectors), oldest dropped first.
Nothing from other rooms, ever, and never another user's private reply.
"""

from __future__ import annotations

from django.conf import settings

from .. import events, selectors
from ..models import Assistant, AssistantRequest, Message, Room
from .provider import ChatRequest, Endpoint, endpoint_default

DEFAULT_SYSTEM_PROMPT = (
    'You are {name}, an AI assistant taking part in a group chat room called "{room}" with several people. '
    "Each user message starts with the sender's name and a colon. Reply to the person who mentioned you, "
    "address them by name when it helps, keep answers concise, and use Markdown where it helps readability."
)
CATCHUP_PROMPT = (
    'You are {name}, an AI assistant in the group chat room "{room}". {user} has been away. Summarise for '
    "{user} only what happened in the messages below, which they have not read: who said what that matters, "
    "decisions, open questions, anything addressed to {user}. Be brief; use a short Markdown list."
)


def endpoint_for(assistant: Assistant) -> Endpoint:
    """The assistant's model server and key (by the name of the variable holding it)."""
    default = endpoint_default()
    key = settings.ASSISTANT_API_KEYS.get(assistant.key_env, "") if assistant.key_env else default.api_key
    return Endpoint(api_key=key, base_url=assistant.base_url or default.base_url)


def _entry(message: Message, me: Assistant | None = None) -> dict[str, str]:
    # Its own earlier replies are the assistant's turns; another assistant's
    # are what one more participant said.
    if message.role == Message.Role.ASSISTANT and me is not None and message.assistant_id == me.pk:
        return {"role": "assistant", "content": message.text}
    text = message.text
    if message.reply_to_id and message.reply_to is not None and not message.reply_to.deleted:
        text = f'(replying to {message.reply_to.author_name}: "{events.excerpt(message.reply_to.text)}") {text}'
    return {"role": "user", "content": f"{message.author_name}: {text}"}


def _answer_context(room: Room, assistant: Assistant, request: AssistantRequest, reply: Message) -> list[Message]:
    # The room up to the question: each assistant a message asks answers it on
    # its own (the second does not see the first's reply as the last word),
    # and a regenerated reply sees what the first version saw.
    question = request.message
    before = question.seq if question is not None and question.seq else (reply.seq or 1) - 1
    budget = assistant.context_chars or settings.ASSISTANT_CONTEXT_CHARS
    history = selectors.context_messages(room, before_seq=before, budget=budget)
    # A question that quotes an earlier message ("reply to") is about it: the
    # quoted message goes in just before the question when the budget left it out.
    quoted = question.reply_to if question is not None and question.reply_to_id else None
    if quoted is not None and not quoted.deleted and all(m.pk != quoted.pk for m in history):
        index = next((i for i, m in enumerate(history) if question is not None and m.pk == question.pk), len(history))
        history.insert(index, quoted)
    return history


def request_prepare(reply_id: int) -> tuple[ChatRequest, list[int]]:
    """The model request for a started reply, and the ids of the messages in its context."""
    reply = Message.objects.select_related("room", "assistant").get(pk=reply_id)
    request = (
        AssistantRequest.objects.select_related("message__reply_to", "regenerates", "requester")
        .filter(reply_id=reply_id)
        .first()
    )
    room, assistant = reply.room, reply.assistant
    if assistant is None or request is None:
        raise LookupError(f"reply {reply_id} has no assistant or request")
    if request.kind == AssistantRequest.Kind.CATCHUP:
        who = request.requester.get_username() if request.requester else "someone"
        budget = assistant.context_chars or settings.ASSISTANT_CONTEXT_CHARS
        history = selectors.context_unread(room, after_seq=request.since_seq, budget=budget)
        system = CATCHUP_PROMPT.format(name=assistant.name, room=room.name, user=who)
        messages = [{"role": "system", "content": system}, *[_entry(m) for m in history]]
        if not history:
            messages.append({"role": "user", "content": f"{who}: (nothing new since I last read the room)"})
    else:
        history = _answer_context(room, assistant, request, reply)
        system = assistant.system_prompt or DEFAULT_SYSTEM_PROMPT.format(name=assistant.name, room=room.name)
        messages = [{"role": "system", "content": system}, *[_entry(m, assistant) for m in history]]
    chat = ChatRequest(
        messages=messages,
        model=reply.model or assistant.model or settings.ASSISTANT_MODEL,
        temperature=assistant.temperature,
        max_tokens=assistant.max_tokens,
        endpoint=endpoint_for(assistant),
    )
    return chat, [m.pk for m in history]
