"""Types of the C reader (features/_replay.c)."""

def read(
    heads: bytes,
    records: bytes,
    card_of: list[int],
    terminal_of: list[int],
    merchant_of: list[int],
    cards: list[bytes | None],
    places: list[bytes | None],
    layout: tuple[int, ...],
    /,
) -> tuple[bytearray, bytearray, list[int], list[int]]: ...
def fold(
    cards: list[bytes], places: list[bytes], layout: tuple[int, ...], /
) -> tuple[list[bytes | None], list[bytes | None]]: ...
