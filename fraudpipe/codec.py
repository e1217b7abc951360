"""The one place where bytes become events and events become bytes.

Topics carry UTF-8 JSON objects. :func:`decode` parses and validates in one pass (pydantic's JSON parser) and
raises :class:`DecodeError` with a machine-readable :class:`~fraudpipe.contracts.Reason` for anything it refuses;
:func:`dead_letter` wraps refused bytes into the envelope sent to ``<topic>.dlq.v1``. :func:`encode` turns one event
into bytes (the scoring hot path writes its decisions and alerts with :mod:`streams.outputs` instead). Nothing here
does I/O.

Reason precedence: size and emptiness are checked first, then JSON syntax, then the first failing field in field
order. Duplicate keys are refused only once the event is otherwise valid (checked exactly, after a cheap scan).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from fraudpipe.contracts import (
    AMOUNT_CAPS_CONTEXT,
    LATEST_EVENT_TIME_CONTEXT,
    DeadLetter,
    Event,
    Reason,
)
from fraudpipe.pan import mask_pans

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "DecodeError",
    "dead_letter",
    "dead_letter_key",
    "decode",
    "digest",
    "encode",
]

MAX_PAYLOAD_BYTES = 64 * 1024
"""Largest accepted event. A transaction is ~0.5 KB; anything near this is a producer bug or an attack."""
_MAX_DETAIL_CHARS = 2_000

E = TypeVar("E", bound=Event)


class DecodeError(ValueError):
    """An input refused by :func:`decode`: ``reason`` (stable code) and ``detail`` (human text, PAN-masked)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(event: Event) -> bytes:
    """Compact UTF-8 JSON of ``event`` (datetimes as ISO-8601 with offset)."""
    return event.__pydantic_serializer__.to_json(event)


def digest(event: Event) -> str:
    """The content digest of ``event``: BLAKE2b-128 of its canonical encoding (:func:`encode`: fields in contract
    order, times in UTC), as 32 hex characters. Two events with equal fields have equal digests whatever the bytes
    they arrived as (key order, whitespace, time zone offset); any field that differs changes it."""
    return hashlib.blake2b(encode(event), digest_size=16).hexdigest()


def decode(raw: bytes | None, kind: type[E], *, latest_event_time: datetime | None = None,
           amount_caps: Mapping[str, float] | None = None) -> E:  # fmt: skip
    """Parse and validate ``raw`` as a ``kind`` event.

    Args:
        raw: the message value as received (``None`` for a tombstone).
        kind: the contract to validate against (``Transaction``, ``Label``, ...).
        latest_event_time: refuse event times at or after this instant (callers pass now + allowed clock skew);
            without it only the fixed sane range applies.
        amount_caps: the largest accepted amount per currency (major units; ``scoring.amount_caps()``); without
            it, :data:`fraudpipe.currencies.DEFAULT_CAPS`.

    Raises:
        DecodeError: with the reason of the first problem found.
    """
    if not raw:
        raise DecodeError(Reason.EMPTY_PAYLOAD, "empty message value")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise DecodeError(Reason.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    context: dict[str, Any] | None = None
    if latest_event_time is not None or amount_caps is not None:
        context = {LATEST_EVENT_TIME_CONTEXT: latest_event_time, AMOUNT_CAPS_CONTEXT: amount_caps}
    try:
        event = kind.model_validate_json(raw, strict=True, context=context)
    except ValidationError as error:
        errors = error.errors(include_input=False, include_url=False)
        raise DecodeError(_reason(errors[0], raw), mask_pans(_detail(errors).encode()).decode()) from None
    if _may_repeat_a_key(raw, event) and (key := _repeated_key(raw)) is not None:
        where = key if key in _field_names() else "<unknown field>"
        raise DecodeError(Reason.DUPLICATE_KEY, f"key {where!r} appears more than once")
    return event


def dead_letter(
    raw: bytes | None,
    *,
    reason: Reason,
    detail: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    failed_at: datetime,
) -> DeadLetter:
    """The DLQ envelope for ``raw``: payload and detail PAN-masked, payload cut to ``DeadLetter.MAX_PAYLOAD_CHARS``."""
    data = raw or b""
    text = mask_pans(data).decode("utf-8", errors="backslashreplace")
    truncated = len(text) > DeadLetter.MAX_PAYLOAD_CHARS
    safe_detail = mask_pans(detail.encode("utf-8", errors="backslashreplace")).decode("utf-8", errors="replace")
    return DeadLetter(
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        reason=reason,
        detail=safe_detail[:_MAX_DETAIL_CHARS],
        payload=text[: DeadLetter.MAX_PAYLOAD_CHARS],
        payload_bytes=len(data),
        payload_truncated=truncated,
        failed_at=failed_at,
    )


def dead_letter_key(key: bytes | None) -> bytes:
    """The Kafka key a dead letter is sent with: its source record's key, every possible PAN in it masked (a record
    refused for holding a PAN may hold it in its key too; dead letters are kept for weeks)."""
    return mask_pans(key) if key else b""


# --- error mapping ------------------------------------------------------------------------------------------

_REASON_VALUES = frozenset(reason.value for reason in Reason)
_BY_TYPE = {
    "missing": Reason.MISSING_FIELD,
    "extra_forbidden": Reason.EXTRA_FIELD,
    "finite_number": Reason.INVALID_NUMBER,
    "string_too_long": Reason.STRING_TOO_LONG,
    "timezone_aware": Reason.NAIVE_DATETIME,
    "model_type": Reason.NOT_AN_OBJECT,
    "model_attributes_type": Reason.NOT_AN_OBJECT,
}


def _reason(error: ErrorDetails, raw: bytes) -> Reason:
    kind, loc = error["type"], error["loc"]
    if kind in _REASON_VALUES:
        return Reason(kind)
    if kind == "json_invalid":
        return _json_reason(error["msg"], raw)
    if kind in _BY_TYPE:
        return _BY_TYPE[kind]
    if loc == ("schema_version",):
        return Reason.UNSUPPORTED_SCHEMA_VERSION
    if loc and loc[-1] == "currency" and kind == "literal_error":
        return Reason.INVALID_CURRENCY
    if loc and loc[-1] == "amount" and kind in {"greater_than", "greater_than_equal"}:
        return Reason.AMOUNT_NEGATIVE
    if loc and loc[-1] == "amount" and kind in {"less_than", "less_than_equal"}:
        return Reason.AMOUNT_TOO_LARGE
    if kind.endswith("_type") or kind == "int_from_float":
        return Reason.WRONG_TYPE
    return Reason.INVALID_VALUE


def _json_reason(message: str, raw: bytes) -> Reason:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return Reason.NOT_UTF8
    if "number out of range" in message:
        return Reason.INVALID_NUMBER
    return Reason.INVALID_JSON


@cache
def _field_names() -> frozenset[str]:
    """Every field name of every contract: the only names an error message may repeat from the input."""
    kinds: list[type[Event]] = [Event]
    names: set[str] = set()
    while kinds:
        kind = kinds.pop()
        names.update(kind.model_fields)
        kinds.extend(kind.__subclasses__())
    return frozenset(names)


def _where(error: ErrorDetails) -> str:
    """The error's location, naming fields only: a key that is not a field (an unknown key, a dict key) is input,
    and input is never echoed (it may be a PAN)."""
    known = _field_names()
    if not error["loc"] and error["type"] in (Reason.AMOUNT_PRECISION.value, Reason.AMOUNT_TOO_LARGE.value):
        return "amount"  # checked with the currency, by the contract's model validator
    parts = ["<unknown field>" if error["type"] == "extra_forbidden" and i == len(error["loc"]) - 1
             else str(part) if isinstance(part, int) or part in known else "<key>"
             for i, part in enumerate(error["loc"])]  # fmt: skip
    return ".".join(parts) or "<event>"


def _detail(errors: list[ErrorDetails]) -> str:
    """What was wrong, field by field (at most five), with no input value in it: messages are pydantic's and our
    own (neither quotes the input: errors are read with ``include_input=False``), locations name fields only."""
    parts = []
    for error in errors[:5]:
        where = _where(error)
        message = error["msg"] if len(error["msg"]) <= 160 else error["msg"][:157] + "..."
        parts.append(f"{where}: {message}")
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return "; ".join(parts)


# --- duplicate keys -----------------------------------------------------------------------------------------


_WHITESPACE_AFTER_QUOTE = (b'" ', b'"\t', b'"\n', b'"\r')


def _may_repeat_a_key(raw: bytes, event: Event) -> bool:
    """Cheap over-approximation of "some key appears twice".

    With unknown fields forbidden, every key of a valid event is a field it set, and a key ends with ``":``, which
    inside a string value can only appear escaped (``\\":``). So when the keys counted that way equal the fields set,
    no key repeats. Escapes (``\\u``) or whitespace after a quote could hide a key from the count: check exactly.
    """
    if b"\\u" in raw or any(pattern in raw for pattern in _WHITESPACE_AFTER_QUOTE):
        return True
    keys = raw.count(b'":') - raw.count(b'\\":')
    return keys != _keys_set(event)


def _holds_objects(annotation: Any) -> bool:
    """True when a value of ``annotation`` can be (or contain) a JSON object or array."""
    if isinstance(annotation, type) and issubclass(annotation, (BaseModel, dict, list)):
        return True
    if get_origin(annotation) in (dict, list):
        return True
    return any(_holds_objects(argument) for argument in get_args(annotation))


@cache
def _is_flat(kind: type[Event]) -> bool:
    """True when no field of ``kind`` can hold a JSON object (so its keys are exactly its fields set)."""
    return not any(_holds_objects(field.annotation) for field in kind.model_fields.values())


def _keys_set(event: Event) -> int:
    """Number of JSON keys the input of ``event`` had, nested objects included (duplicates counted once)."""
    if _is_flat(type(event)):
        return len(event.model_fields_set)
    total = len(event.model_fields_set)
    for name in event.model_fields_set:
        value = getattr(event, name)
        if isinstance(value, Event):
            total += _keys_set(value)
        elif isinstance(value, dict):
            total += len(value)
        elif isinstance(value, list):
            total += sum(_keys_set(item) for item in value if isinstance(item, Event))
    return total


def _repeated_key(raw: bytes) -> str | None:
    """The first key that appears twice in one JSON object of ``raw`` (exact check), else ``None``."""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not repeated:
                repeated.append(key)
            seen.add(key)
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)
    return repeated[0] if repeated else None
