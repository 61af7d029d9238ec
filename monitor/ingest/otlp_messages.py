"""The exchange an LLM span recorded, as OpenAI-style messages and an answer, read from the
attributes and events the instrumentations write. Pure: no IO.

    exchange(span, attributes(span.attributes)) -> (messages, response)

**Where the exchange is read**, first source that holds messages wins:

1. ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON text or structured values:
   ``[{"role", "parts": [{"type": "text", "content"}, {"type": "uri", "modality": "image",
   "uri"}, {"type": "blob", "modality": "image", "mime_type", "content"}]}]``);
2. span events ``gen_ai.system.message``, ``gen_ai.user.message``, ``gen_ai.assistant.message``,
   ``gen_ai.tool.message`` (attribute ``content``) and ``gen_ai.choice`` (``message`` or
   ``content``); the older ``gen_ai.content.prompt`` / ``gen_ai.content.completion`` events
   (``gen_ai.prompt`` / ``gen_ai.completion``, JSON);
3. OpenLLMetry's flattened ``gen_ai.prompt.{i}.role/content``, ``gen_ai.completion.{i}.content``;
4. OpenInference's ``llm.input_messages.{i}.message.role/content`` (or ``.message.contents.{j}.
   message_content.type/text/image.image.url``), ``llm.output_messages.{i}.message.content``,
   then ``input.value`` / ``output.value`` (an OpenAI request body and chat completion when
   ``input.mime_type`` / ``output.mime_type`` is ``application/json``, else plain text).

A content that is JSON text of a parts list (what OpenLLMetry writes for multimodal messages) is
read as parts. Image parts become OpenAI ``image_url`` parts, so the record is then built by
:func:`~monitor.ingest.parsing.parse_record` from ``messages`` exactly as the records API
builds it: the last user message is the prompt, its image (data URL or allowed http(s) URL)
the image, the same limits. An LLM span whose messages hold no user text or image is
``no_prompt`` (instrumentations leave content out unless told to capture it); one that breaks a
records API rule is ``invalid``, with the error as the reason's message.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

# Events of the GenAI conventions that hold one message, and the role each implies.
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_INDEXED = re.compile(r"^(\d{1,6})\.(.+)$")


def attributes(pairs: Iterable[KeyValue]) -> dict[str, AnyValue]:
    return {pair.key: pair.value for pair in pairs}


def attribute_value(value: AnyValue | None) -> Any:
    """An attribute value as plain Python (str, bool, int, float, bytes, list, dict, None)."""
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [attribute_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {pair.key: attribute_value(pair.value) for pair in value.kvlist_value.values}
    return getattr(value, kind)


def text_attribute(attrs: Mapping[str, AnyValue], key: str) -> str | None:
    value = attribute_value(attrs.get(key))
    return value if isinstance(value, str) else None


# -- messages -------------------------------------------------------------------------------------

Message = dict[str, Any]


def exchange(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    """(OpenAI-style messages, response) from the first source holding messages."""
    for read in (_semconv_attributes, _semconv_events, _openllmetry, _openinference):
        messages, response = read(span, attrs)
        if messages:
            return messages, response
    return [], None


def has_user_content(messages: list[Message]) -> bool:
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return True
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") in ("text", "image_url") for part in content
        ):
            return True
    return False


def _json_or_value(value: Any) -> Any:
    """JSON text decoded (what instrumentations write for structured values), else as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON after all, or nested past the parser
            return value
    return value


def _content(value: Any) -> Any:
    """A message content as the records API reads it: text, or a list of OpenAI parts."""
    decoded = _json_or_value(value)
    if isinstance(decoded, list) and all(
        isinstance(part, dict) and "type" in part for part in decoded
    ):
        return [part for part in (_part(p) for p in decoded) if part is not None]
    if isinstance(decoded, dict) and "type" in decoded:  # one part on its own
        part = _part(decoded)
        return [part] if part is not None else []
    return value


def _part(part: dict[str, Any]) -> dict[str, Any] | None:
    """One content part (OpenAI's, or GenAI semconv's text / uri / blob) as an OpenAI part."""
    kind = part.get("type")
    if kind == "text":
        text = part.get("text", part.get("content"))
        return {"type": "text", "text": text}
    if kind == "image_url":
        return {"type": "image_url", "image_url": part.get("image_url")}
    if kind in ("uri", "image") and part.get("modality", "image") == "image":
        url = part.get("uri", part.get("url", part.get("image")))
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "blob" and part.get("modality") == "image":
        mime = part.get("mime_type") or "image/png"
        data = part.get("content")
        if isinstance(data, bytes):
            data = base64.b64encode(data).decode("ascii")
        if isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    return None  # audio, files, tool calls: not what the monitor measures


def _text_of(content: Any) -> Any:
    """The answer's text: a string, or the text parts of a parts list joined by newlines."""
    decoded = _content(content)
    if isinstance(decoded, list):
        texts = [p["text"] for p in decoded if p.get("type") == "text" and p.get("text")]
        return "\n".join(str(t) for t in texts) if texts else None
    return decoded


def _semconv_attributes(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    inputs = _json_or_value(attribute_value(attrs.get("gen_ai.input.messages")))
    if not isinstance(inputs, list):
        return [], None
    messages = [
        {"role": m.get("role"), "content": _content(m.get("parts", m.get("content")))}
        for m in inputs
        if isinstance(m, dict)
    ]
    outputs = _json_or_value(attribute_value(attrs.get("gen_ai.output.messages")))
    response = None
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        response = _text_of(outputs[0].get("parts", outputs[0].get("content")))
    return messages, response


def _semconv_events(span: Span, _attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    messages: list[Message] = []
    response: Any = None
    for event in span.events:
        event_attrs = attributes(event.attributes)
        if event.name in MESSAGE_EVENTS:
            role = text_attribute(event_attrs, "role") or MESSAGE_EVENTS[event.name]
            messages.append(
                {"role": role, "content": _content(attribute_value(event_attrs.get("content")))}
            )
        elif event.name == "gen_ai.choice" and response is None:
            message = _json_or_value(attribute_value(event_attrs.get("message")))
            content = message.get("content") if isinstance(message, dict) else None
            response = _text_of(
                content if content is not None else attribute_value(event_attrs.get("content"))
            )
        elif event.name == "gen_ai.content.prompt" and not messages:
            prompt = _json_or_value(attribute_value(event_attrs.get("gen_ai.prompt")))
            if isinstance(prompt, list):
                messages = [
                    {"role": m.get("role"), "content": _content(m.get("content"))}
                    for m in prompt
                    if isinstance(m, dict)
                ]
        elif event.name == "gen_ai.content.completion" and response is None:
            completion = _json_or_value(attribute_value(event_attrs.get("gen_ai.completion")))
            first = completion[0] if isinstance(completion, list) and completion else completion
            if isinstance(first, dict):
                inner = first.get("message", first)
                response = _text_of(inner.get("content") if isinstance(inner, dict) else None)
    return messages, response


def _indexed(attrs: Mapping[str, AnyValue], prefix: str) -> list[dict[str, Any]]:
    """Flattened attributes ``<prefix><i>.<rest>`` grouped by ``i`` (in order): [{rest: value}]."""
    groups: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        match = _INDEXED.match(key[len(prefix) :])
        if match:
            groups.setdefault(int(match[1]), {})[match[2]] = attribute_value(value)
    return [groups[i] for i in sorted(groups)]


def _openllmetry(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    messages = [
        {"role": m.get("role", "user"), "content": _content(m.get("content"))}
        for m in _indexed(attrs, "gen_ai.prompt.")
    ]
    completions = _indexed(attrs, "gen_ai.completion.")
    response = _text_of(completions[0].get("content")) if completions else None
    return messages, response


def _openinference(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    messages = [_openinference_message(m) for m in _indexed(attrs, "llm.input_messages.")]
    outputs = _indexed(attrs, "llm.output_messages.")
    response = _text_of(outputs[0].get("message.content")) if outputs else None
    if response is None:
        response = _output_value(attrs)
    if messages:
        return messages, response
    return _input_value(attrs), response


def _openinference_message(flat: dict[str, Any]) -> Message:
    role = flat.get("message.role", "user")
    if "message.content" in flat:
        return {"role": role, "content": _content(flat["message.content"])}
    parts: list[dict[str, Any]] = []
    for item in _indexed_plain(flat, "message.contents."):
        kind = item.get("message_content.type")
        if kind == "text":
            parts.append({"type": "text", "text": item.get("message_content.text")})
        elif kind == "image":
            url = item.get("message_content.image.image.url")
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": role, "content": parts}


def _indexed_plain(flat: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    groups: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        if key.startswith(prefix):
            match = _INDEXED.match(key[len(prefix) :])
            if match:
                groups.setdefault(int(match[1]), {})[match[2]] = value
    return [groups[i] for i in sorted(groups)]


def _is_json(attrs: Mapping[str, AnyValue], key: str) -> bool:
    return (text_attribute(attrs, key) or "").split(";")[0].strip().lower() == "application/json"


def _input_value(attrs: Mapping[str, AnyValue]) -> list[Message]:
    value = text_attribute(attrs, "input.value")
    if value is None:
        return []
    if not _is_json(attrs, "input.mime_type"):
        return [{"role": "user", "content": value}]
    body = _json_or_value(value)
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return [m for m in body["messages"] if isinstance(m, dict)]
    if isinstance(body, dict) and isinstance(body.get("prompt"), str):
        return [{"role": "user", "content": body["prompt"]}]
    return []


def _output_value(attrs: Mapping[str, AnyValue]) -> Any:
    value = text_attribute(attrs, "output.value")
    if value is None or not _is_json(attrs, "output.mime_type"):
        return value
    body = _json_or_value(value)
    if isinstance(body, dict) and isinstance(body.get("choices"), list) and body["choices"]:
        choice = body["choices"][0]
        if isinstance(choice, dict):
            message = choice.get("message")
            if isinstance(message, dict):
                return _text_of(message.get("content"))
            return choice.get("text")
    return value
