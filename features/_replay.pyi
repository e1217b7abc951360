"""Types of the C extension (features/_replay.c)."""

def plan(
    txns: object, items: dict[str, int], item_id: object, day_us: int, /
) -> tuple[bytes, bytes, bytes, list[str], list[str]]: ...
def read(
    answer: bytes,
    records: bytes,
    index: bytes,
    card_bases: object,
    card_logs: object,
    places: object,
    layout: tuple[int, ...],
    /,
) -> tuple[bytearray, bytearray, list[int], list[int]]: ...
def fold(
    card_bases: object, card_logs: object, places: object, layout: tuple[int, ...], /
) -> tuple[list[bytes | None], list[bytes | None]]: ...
def columns(txns: object, /) -> tuple[bytes, bytes, bytes, bytes, bytes]: ...
def mget(prefix: str, cards: list[str], places: list[str], /) -> bytes: ...
