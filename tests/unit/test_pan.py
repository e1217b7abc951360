"""PAN detection, masking and keyed tokenization."""

from __future__ import annotations

import pytest

from fraudpipe.pan import CardRef, InvalidPanError, contains_pan, is_pan, luhn_valid, mask_pans, tokenize_pan
from tests.factories import MASTERCARD_TEST_PAN, VISA_TEST_PAN

KEY = b"k" * 32


@pytest.mark.parametrize(
    "digits", [VISA_TEST_PAN, MASTERCARD_TEST_PAN, "378282246310005", "6011111111111117", "79927398713"]
)
def test_luhn_accepts_valid_numbers(digits: str) -> None:
    assert luhn_valid(digits)


@pytest.mark.parametrize("digits", ["4111111111111112", "79927398710", "", "1", "41111111a1111111"])
def test_luhn_refuses_invalid_numbers(digits: str) -> None:
    assert not luhn_valid(digits)


def test_same_pan_and_key_give_the_same_token_in_any_format() -> None:
    plain = tokenize_pan(VISA_TEST_PAN, KEY)
    assert plain == tokenize_pan("4111 1111 1111 1111", KEY) == tokenize_pan("4111-1111-1111-1111", KEY)
    assert plain.token.startswith("tok_")
    assert len(plain.token) == 36
    assert (plain.bin, plain.last4) == ("411111", "1111")


def test_another_key_or_pan_gives_another_token() -> None:
    assert tokenize_pan(VISA_TEST_PAN, KEY).token != tokenize_pan(VISA_TEST_PAN, b"other-key" * 4).token
    assert tokenize_pan(VISA_TEST_PAN, KEY).token != tokenize_pan(MASTERCARD_TEST_PAN, KEY).token


def test_the_token_does_not_contain_the_pan() -> None:
    ref = tokenize_pan(VISA_TEST_PAN, KEY)
    assert VISA_TEST_PAN not in repr(ref)
    assert VISA_TEST_PAN[6:12] not in ref.token


@pytest.mark.parametrize("value", ["4111111111111112", "12345", "4111-1111-1111-111a", "4" * 20])
def test_invalid_pans_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(InvalidPanError) as caught:
        tokenize_pan(value, KEY)
    assert value not in str(caught.value)


def test_card_ref_is_immutable() -> None:
    ref = CardRef("tok_x", "411111", "1111")
    with pytest.raises(AttributeError):
        ref.token = "tok_y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (f"refund for {VISA_TEST_PAN} please", True),
        ("card 4111 1111 1111 1111", True),
        ("card 4111-1111-1111-1111.", True),
        (f"order 12345 {VISA_TEST_PAN}", True),
        ("Café 東京 #42", False),
        ("order 2024-03-01-000001", False),
        ("4111111111111112", False),
        ("phone +41 44 668 18 00", False),
        ("", False),
    ],
)
def test_contains_pan(text: str, found: bool) -> None:
    assert contains_pan(text) is found


def test_is_pan_is_about_the_whole_value() -> None:
    assert is_pan(VISA_TEST_PAN)
    assert is_pan(" 4111 1111 1111 1111 ")
    assert not is_pan(f"x{VISA_TEST_PAN}")
    assert not is_pan("1111")


def test_mask_pans_keeps_bin_and_last_four_only() -> None:
    masked = mask_pans(f'{{"pan": "{VISA_TEST_PAN}", "other": "5555 5555 5555 4444", "id": 12345}}'.encode())
    assert masked == b'{"pan": "411111******1111", "other": "555555******4444", "id": 12345}'


def test_mask_pans_finds_a_pan_inside_a_longer_run() -> None:
    masked = mask_pans(f"ref 99{VISA_TEST_PAN}7".encode())
    assert VISA_TEST_PAN.encode() not in masked


def test_mask_pans_handles_huge_digit_runs_quickly() -> None:
    masked = mask_pans(b"9" * 1_000_000)
    assert len(masked) == 1_000_000
    assert masked.count(b"*") == 1_000_000 - 10


def test_digits_inside_an_identifier_are_not_a_pan() -> None:
    token = "tok_4bf7282fc8189546275127247d28fe45"  # holds 8189546275127247, which passes Luhn
    assert luhn_valid("8189546275127247")
    assert not contains_pan(token)
    assert mask_pans(token.encode()) == token.encode()
