"""Every Redis key fraudpipe writes, in one place. ``prefix`` is ``settings.redis.key_prefix`` (``fp:v4:``); value
formats are their owners' (named beside each key). The feature store's script (``features/apply.lua``) builds the
same names from the prefix and the entity names it is sent (:func:`entity`), and erasure
(:func:`fraudpipe.privacy.erase`) deletes a subject's keys by these functions::

    P card:<token>                 the card's base: its state when last folded (features.blobs)
    P cardlog:<token>              the card's records appended since, after a head holding its fold generation
    P applied:<token>:<block>      hash: the apply-once markers of the card's transactions of event days block x
                                   MARKER_DAYS .. (block + 1) x MARKER_DAYS - 1 (features.plan)
    P terminal:<id>, P merchant:<id>   a place's base, then records appended since (features.plan)
    P label:<txn_id>               "version,fraud" of the last label applied (features/apply.lua)
    P blocked:<token>              the card is blocked: ids of its transactions whose last label is a fraud
    P decision:<generation>:<slot> hash: remembered decisions by transaction id (streams.pipeline.DecisionMemory)
    P sunk:<sink>:<alert id>       an alert handed to a sink once (streams.sinks)
    P erased                       hash: the erased subjects' digests and when (fraudpipe.privacy.ErasureList)

Everything of a card lives under its token; terminals and merchants hold counts only. A transaction's ``label:``,
``decision:`` and ``sunk:`` entries are found by its id.
"""

from __future__ import annotations

__all__ = [
    "APPLIED",
    "MARKED_SINKS",
    "applied",
    "applied_of_card",
    "blocked",
    "card",
    "cardlog",
    "decisions",
    "entity",
    "erased",
    "label",
    "sunk",
]

APPLIED = "applied:"
MARKED_SINKS = ("redis_stream", "webhook")
"""The alert sinks that keep once-only markers (:func:`sunk`; streams.sinks)."""


def entity(kind: str, ident: str) -> str:
    """An entity's name without the prefix (``card:<token>``, ``terminal:<id>``, ``merchant:<id>``): what the
    store's script is sent and prefixes."""
    return f"{kind}:{ident}"


def card(prefix: str, token: str) -> str:
    return f"{prefix}card:{token}"


def cardlog(prefix: str, token: str) -> str:
    return f"{prefix}cardlog:{token}"


def blocked(prefix: str, token: str) -> str:
    return f"{prefix}blocked:{token}"


def applied(prefix: str, token: str, block: int) -> str:
    """The marker hash of a card's transactions of the block ``block`` of event days."""
    return f"{prefix}{APPLIED}{token}:{block}"


def applied_of_card(prefix: str, token: str) -> str:
    """A SCAN pattern matching every marker hash of the card ``token`` (and nothing else)."""
    escaped = "".join("\\" + c if c in "*?[]\\^" else c for c in token)
    return f"{prefix}{APPLIED}{escaped}:*"


def label(prefix: str, txn_id: str) -> str:
    return f"{prefix}label:{txn_id}"


def decisions(prefix: str) -> str:
    """The stem of the decision memory's hashes (``<generation>:<slot>`` follows)."""
    return f"{prefix}decision:"


def sunk(prefix: str, sink: str) -> str:
    """The stem of a sink's once-only markers (the alert id follows)."""
    return f"{prefix}sunk:{sink}:"


def erased(prefix: str) -> str:
    return f"{prefix}erased"
