"""What applying a transaction means for the online state, as bytes: pure, shared by the Redis store and its twin.

A *plan* is a transaction reduced to what the store needs: its ids (key names), its event day and one binary
*record* (time, cents, card-present position, recent-item ids). A batch's plans become one *request* for the script
(``features/apply.lua``) and the inputs of the readers. :func:`plan_batch` builds them for a whole batch, in C when
the extension is built (``features/_replay.c``; the figure: the in-process "features" stage of ``fraudpipe bench``,
where planning a batch of 500 costs ~1.5 µs per transaction in C, ~19 µs in Python); :func:`plan` is the definition,
one transaction at a time, and a test holds the two byte for byte equal.

Keys: :mod:`fraudpipe.keys` (value formats in :mod:`features.blobs`). A card's apply-once markers are a hash per
block of MARKER_DAYS event days (``applied:<token>:<block>``): field <txn id> = "", and field "~" = "" (it tells the
script it created the hash); it expires marker_ttl_s plus MARKER_DAYS after it was created. A redelivery is
recognised by its transaction id among its card's markers of its event day's block, for as long as they last (a
transaction delivered again with another event time, or after its markers expired, is a new one).
Recent items are kept as 48-bit ids (:func:`item_id`), never as names.

Record formats (little-endian)::

    RECORD       u8 flags (bits 0-3: which KINDS it has, bit 4: a card-present position), i64 event time µs,
                 i64 cents, [f64 lat, f64 lon if bit 4], then a 6-byte id per kind it has, in KINDS order
    LABEL        u8 0x80 (fraud +1) or 0x81 (fraud -1), i32 the payment's day
    PLACE_DAY    i32 the payment's day (>= 0)
    PLACE_LABEL  i32 the bitwise complement of the payment's day (< 0), i8 fraud delta (+1 / -1)

Request: u32 transactions, cards, places; then per card, in the order the batch first names them: u8 length and
token, u32 transactions k, k x (u32 its number in the batch, u8 length and txn id, i32 event day, u8 record length),
u32 length and the k records joined; then per place, likewise: u8 length and name (``terminal:<id>``,
``merchant:<id>``), u32 transactions k, their numbers (u32 each), their PLACE_DAY records joined. (Joined, so the
script appends them as they are when the batch has no redelivery.) The script's answer: a byte per transaction (1:
applied), then the byte length, before the batch, of each card's log and each place's value (u32 each, in the
request's order).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from features.formulas import CARD_WINDOWS, FRAUD_WINDOWS, PLACE_WINDOWS, SQUARE_CAP_CENTS, cents
from features.windows import KEPT, LABEL_DELAY_DAYS, PLACE_KEPT_DAYS, RESOLUTIONS, WINDOWS
from fraudpipe import keys
from fraudpipe.clock import micros_of
from fraudpipe.contracts import Label, Transaction

try:
    from features import _replay as native
except ImportError:  # installed without a C compiler: the Python definitions run instead
    native = None  # type: ignore[assignment]

__all__ = [
    "COMPILED",
    "CREATED",
    "DAY_ITEMS",
    "DAY_US",
    "INDEX",
    "ITEM_SIZE",
    "KINDS",
    "LABEL",
    "MARKER_DAYS",
    "PAYMENT",
    "PLACE_DAY",
    "PLACE_LABEL",
    "Plan",
    "Planned",
    "item_id",
    "label_plan",
    "layout",
    "marker_key",
    "micros_of",
    "native",
    "plan",
    "plan_batch",
]

COMPILED = native is not None
"""Whether the C extension was built (``pip install`` builds it when a C compiler is there)."""
KINDS = ("terminal", "merchant", "country", "device")
"""Kinds of recent item a card remembers, in record order."""
DAY_ITEMS = ("merchant", "country")
"""Kinds a card remembers only within a day of its latest payment: features read them in the 24h window only
(terminals and devices also say whether the card used them before, among its RECENT_ITEMS most recent)."""
GEO = 0x10
PAYMENT = struct.Struct("<Bqq")
"""A RECORD's fixed part: flags, event time µs, cents."""
_GEO = struct.Struct("<dd")
ITEM_SIZE = 6
LABEL = struct.Struct("<Bi")
PLACE_DAY = struct.Struct("<i")
PLACE_LABEL = struct.Struct("<ib")
INDEX = struct.Struct("<iiiII")
"""Per transaction of a :class:`Planned`: its card's number, its terminal's and merchant's (-1: none), and where its
record is in ``records`` (offset, length)."""
_COUNTS = struct.Struct("<III")
_U32 = struct.Struct("<I")
_DAY_LEN = struct.Struct("<iB")
CREATED = "~"
"""A field every marker hash holds (not a valid transaction id): setting it tells the script whether it created it."""
DAY_US = RESOLUTIONS["d"] * 1_000_000
MARKER_DAYS = 16
"""Event days whose markers of one card share a hash: one small hash per card and block of days, so that a batch checks
and sets a payment's marker with one command (Redis searches a small hash entry by entry: a block holds ~30 markers of
a card paying twice a day), and old markers go with their hash's expiry, nothing to prune. Longer blocks mean fewer
keys per card (each ~130 bytes of its own) and longer lists to search."""


def layout(*, recent_items: int, marker_ttl_s: int, entity_ttl_s: int, label_ttl_s: int) -> dict[str, Any]:
    """Bucket sizes (µs), retention, windows, TTLs (s, a marker hash's from its creation) and days per marker hash:
    :mod:`features.windows` and the store's settings, as the readers and the script read them."""
    card_windows = [[WINDOWS[name].resolution, WINDOWS[name].buckets] for name in CARD_WINDOWS]
    return {
        "size": {res: seconds * 1_000_000 for res, seconds in RESOLUTIONS.items()},
        "kept": dict(KEPT),
        "card_rings": list(RESOLUTIONS),
        "card_windows": card_windows,
        "card_frauds": WINDOWS["30d"].buckets,
        "place_windows": [WINDOWS[name].buckets for name in PLACE_WINDOWS],
        "fraud_windows": [WINDOWS[name].buckets for name in FRAUD_WINDOWS],
        "label_delay": LABEL_DELAY_DAYS,
        "place_kept": PLACE_KEPT_DAYS,
        "recent_items": recent_items,
        "day_items": [KINDS.index(kind) for kind in DAY_ITEMS],
        "square_cap": SQUARE_CAP_CENTS,
        "marker_ttl": marker_ttl_s + MARKER_DAYS * RESOLUTIONS["d"],
        "marker_days": MARKER_DAYS,
        "entity_ttl": entity_ttl_s,
        "label_ttl": label_ttl_s,
    }


def item_id(name: str) -> int:
    """A recent item's 48-bit id (BLAKE2b of its name): fixed width, no name stored in Redis."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=ITEM_SIZE).digest(), "little")


@functools.lru_cache(maxsize=1 << 16)
def _item_bytes(name: str) -> bytes:
    return item_id(name).to_bytes(ITEM_SIZE, "little")


class Plan(NamedTuple):
    """One transaction as the store reads it: ids ("" when it has no terminal / merchant), event day, record."""

    txn_id: str
    card: str
    terminal: str
    merchant: str
    day: int
    record: bytes


def plan(txn: Transaction) -> Plan:
    """One transaction's :class:`Plan` (the definition; :func:`plan_batch` builds a batch's at once)."""
    micros = micros_of(txn.event_time)
    if micros < 0:
        raise ValueError("event times before 1970 are not supported by the online store")
    amount = cents(txn.amount)
    geo = txn.channel == "card_present" and txn.lat is not None and txn.lon is not None
    names = (txn.terminal_id, txn.merchant_id, txn.country, txn.device_id)
    flags = sum(1 << k for k, name in enumerate(names) if name) | (GEO if geo else 0)
    parts = [PAYMENT.pack(flags, micros, amount)]
    if geo:
        parts.append(_GEO.pack(txn.lat, txn.lon))
    parts += [_item_bytes(name) for name in names if name]
    return Plan(txn.txn_id, txn.card_token, txn.terminal_id or "", txn.merchant_id or "", micros // DAY_US,
                b"".join(parts))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Planned:
    """A batch's plans: the script's ``request``; the ``records`` joined and the ``index`` (:data:`INDEX` per
    transaction) the readers read; the distinct ``cards`` (tokens) and ``places`` (``terminal:<id>``,
    ``merchant:<id>``), each in the order the batch first names them."""

    request: bytes
    records: bytes
    index: bytes
    cards: list[str]
    places: list[str]

    def __len__(self) -> int:
        return len(self.index) // INDEX.size

    def rows(self) -> list[tuple[int, int, int, bytes]]:
        """Per transaction: (card number, terminal number, merchant number (-1: none), record)."""
        return [(card, terminal, merchant, self.records[at : at + size])
                for card, terminal, merchant, at, size in INDEX.iter_unpack(self.index)]  # fmt: skip


def plan_batch(txns: Sequence[Transaction], *, compiled: bool = True) -> Planned:
    """The batch's :class:`Planned`: in C when it is built and ``compiled`` is true, else from :func:`plan`."""
    if compiled and native is not None:
        return Planned(*native.plan(txns, _ITEMS, item_id, DAY_US))
    records, index = bytearray(), bytearray()
    cards: dict[str, list[tuple[int, Plan]]] = {}  # token -> (number in the batch, plan) of its transactions
    places: dict[str, list[tuple[int, Plan]]] = {}  # name -> likewise
    numbers: dict[str, int] = {}  # "card:<token>" or a place's name -> its number among the cards or the places
    for i, txn in enumerate(txns):
        one = plan(txn)
        names = [keys.entity("terminal", one.terminal) if one.terminal else "",
                 keys.entity("merchant", one.merchant) if one.merchant else ""]  # fmt: skip
        card = keys.entity("card", one.card)
        for group, name, key in ((cards, one.card, card), *((places, n, n) for n in names if n)):
            if name not in group:
                numbers[key], group[name] = len(group), []
            group[name].append((i, one))
        index += INDEX.pack(numbers[card], *(numbers[name] if name else -1 for name in names),
                            len(records), len(one.record))  # fmt: skip
        records += one.record
    request = bytearray(_COUNTS.pack(len(txns), len(cards), len(places)))
    for card, members in cards.items():
        request += _text(card, "card_token") + _U32.pack(len(members))
        for i, one in members:
            request += _U32.pack(i) + _text(one.txn_id, "txn_id") + _DAY_LEN.pack(one.day, len(one.record))
        chunk = b"".join(one.record for _, one in members)
        request += _U32.pack(len(chunk)) + chunk
    for name, members in places.items():
        request += _text(name, "place name") + _U32.pack(len(members))
        request += b"".join(_U32.pack(i) for i, _ in members) + b"".join(PLACE_DAY.pack(one.day) for _, one in members)
    return Planned(bytes(request), bytes(records), bytes(index), list(cards), list(places))


def _text(text: str, what: str) -> bytes:
    """``text`` as the request writes it: u8 length, then its UTF-8."""
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"{what} longer than 255 bytes: {text[:40]!r}...")
    return bytes([len(raw)]) + raw


_ITEMS: dict[str, int] = {}
"""The C planner's cache of item ids by name (it empties it past 65,536 names)."""


def marker_key(prefix: str, txn: Transaction) -> str:
    """The hash holding ``txn``'s apply-once marker (field: its transaction id): its card's, of its event day's
    block of MARKER_DAYS."""
    return keys.applied(prefix, txn.card_token, micros_of(txn.event_time) // DAY_US // MARKER_DAYS)


def label_plan(label: Label, day_us: int) -> tuple[str, int, int, int, str, str, str]:
    """One label as the script reads it: txn id, version, fraud 0/1, the payment's day, the entities it moves."""
    return (
        label.txn_id,
        label.label_version,
        int(label.is_fraud),
        micros_of(label.event_time) // day_us,
        keys.entity("card", label.card_token),
        keys.entity("terminal", label.terminal_id) if label.terminal_id is not None else "",
        keys.entity("merchant", label.merchant_id) if label.merchant_id is not None else "",
    )
