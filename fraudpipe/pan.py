"""Primary account numbers (PANs): detection, masking and keyed tokenization.

A raw PAN never leaves the ingestion edge. There it becomes a :class:`CardRef`: a keyed HMAC-SHA256 token (the
only card identity used downstream: topics, Redis keys, files, metrics) plus the BIN (first six digits) and the
last four, which PCI DSS allows to be displayed.

Detection works on *digit groups*: maximal runs of digits separated by single separators people write card
numbers with — a space (or no-break space), a dash, a dot, a slash or an underscore ("4111 1111 1111 1111",
"4111-1111-1111-1111", "4111.1111.1111.1111", "4111111111111111"). A PAN is 13 to 19 digits that pass the Luhn
check and span whole groups. Two policies use it:

- :func:`contains_pan` (validation of every identifier and free-text field): a PAN made of whole groups, so the
  digits of "order 12345 4111111111111111" and "txn_4111111111111111" are found, while a long unbroken number is
  not taken apart into arbitrary windows. A run glued to a letter ("ab4111...") is part of a word, not a number.
- :func:`mask_pans` (dead letters, logs): any 13-19 digit window of any run that passes Luhn masks the run, because
  a false positive there costs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = [
    "PAN_CANDIDATE",
    "PAN_MAX_DIGITS",
    "PAN_MIN_DIGITS",
    "CardRef",
    "InvalidPanError",
    "contains_pan",
    "is_pan",
    "luhn_valid",
    "mask_pans",
    "tokenize_pan",
]

PAN_MIN_DIGITS = 13
PAN_MAX_DIGITS = 19
TOKEN_PREFIX = "tok_"  # noqa: S105 - a prefix, not a secret
_TOKEN_HEX_CHARS = 32  # 128 bits of the HMAC: collision-free at any card population
_LONG_RUN_DIGITS = 64

# A run of digits, each group separated from the next by one space or dash.
# Runs glued to letters ("tok_4bf7...", "ab12345...") are parts of identifiers, not card numbers.
_SEPARATOR = "[ \u00a0./_-]"
_DIGIT_RUN = re.compile(rb"(?<![0-9A-Za-z])[0-9]+(?:(?:[ ./_-]|\xc2\xa0)[0-9]+)*(?![0-9A-Za-z])")
_DIGIT_RUN_STR = re.compile(rf"(?<![0-9A-Za-z])[0-9]+(?:{_SEPARATOR}[0-9]+)*(?![0-9A-Za-z])")
_SEPARATORS = re.compile(_SEPARATOR)
_SEPARATORS_BYTES = re.compile(rb"[ ./_-]|\xc2\xa0")
PAN_CANDIDATE = rf"(?:^|[^0-9A-Za-z])[0-9](?:{_SEPARATOR}?[0-9]){{12}}"
"""A regular expression (Python and Rust syntax) found in every text holding a PAN: 13 digits with single
separators, not glued to a letter or digit before them."""
_CANDIDATE = re.compile(PAN_CANDIDATE)


class InvalidPanError(ValueError):
    """The value given as a PAN is not 13-19 digits passing the Luhn check (the value is never in the message)."""


@dataclass(frozen=True, slots=True)
class CardRef:
    """What downstream code knows of a card: ``token`` (``tok_`` + 32 hex chars), ``bin`` (6 digits), ``last4``."""

    token: str
    bin: str
    last4: str


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (only 0-9, any length >= 2) passes the Luhn mod-10 check."""
    if len(digits) < 2 or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _normalize(pan: str) -> str:
    return _SEPARATORS.sub("", pan.strip())


def is_pan(value: str) -> bool:
    """True when ``value`` (separators allowed between digits) is 13-19 digits passing Luhn."""
    stripped = value.lstrip()
    if len(stripped) < PAN_MIN_DIGITS or not stripped[0].isdigit():
        return False  # the hot path: card tokens and opaque keys start with a letter
    digits = _normalize(value)
    return PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS and luhn_valid(digits)


def tokenize_pan(pan: str, key: bytes) -> CardRef:
    """Token, BIN and last four of ``pan``. Same PAN and key give the same token; another key, another token.

    Raises:
        InvalidPanError: ``pan`` is not a Luhn-valid 13-19 digit number.
    """
    digits = _normalize(pan)
    if not (PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS and luhn_valid(digits)):
        raise InvalidPanError("not a valid PAN (expected 13-19 digits passing the Luhn check)")
    digest = hmac.new(key, digits.encode("ascii"), hashlib.sha256).hexdigest()
    return CardRef(token=TOKEN_PREFIX + digest[:_TOKEN_HEX_CHARS], bin=digits[:6], last4=digits[-4:])


def _group_spans(run: str) -> list[tuple[int, int]]:
    """(start, end) offsets within ``run`` of each digit group."""
    return [(m.start(), m.end()) for m in re.finditer(r"[0-9]+", run)]


def _run_holds_pan_of_whole_groups(run: str) -> bool:
    groups = _group_spans(run)
    for first in range(len(groups)):
        digits = ""
        for last in range(first, len(groups)):
            digits += run[groups[last][0] : groups[last][1]]
            if len(digits) > PAN_MAX_DIGITS:
                break
            if len(digits) >= PAN_MIN_DIGITS and luhn_valid(digits):
                return True
    return False


def contains_pan(text: str) -> bool:
    """True when ``text`` holds a Luhn-valid 13-19 digit number made of whole digit groups."""
    if len(text) < PAN_MIN_DIGITS or _CANDIDATE.search(text) is None:
        return False
    return any(_run_holds_pan_of_whole_groups(m.group()) for m in _DIGIT_RUN_STR.finditer(text) if len(m.group()) >= 13)


def _any_window_is_pan(digits: bytes) -> bool:
    text = digits.decode("ascii")
    for size in range(PAN_MIN_DIGITS, min(PAN_MAX_DIGITS, len(text)) + 1):
        for start in range(len(text) - size + 1):
            if luhn_valid(text[start : start + size]):
                return True
    return False


def _mask_run(match: re.Match[bytes]) -> bytes:
    run = match.group()
    digits = _SEPARATORS_BYTES.sub(b"", run)
    if len(digits) < PAN_MIN_DIGITS:
        return run
    # Long runs are masked without looking: checking every window would cost O(length) Luhn checks per run.
    if len(digits) <= _LONG_RUN_DIGITS and not _any_window_is_pan(digits):
        return run
    # Keep the first six and the last four digits, as PCI DSS allows to display; star the rest.
    return digits[:6] + b"*" * (len(digits) - 10) + digits[-4:]


def mask_pans(data: bytes) -> bytes:
    """``data`` with every digit run that may hold a PAN replaced by its first six, stars and last four digits."""
    return _DIGIT_RUN.sub(_mask_run, data)
