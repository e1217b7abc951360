"""The fast sealing gives the very seals of the first implementation, kept here as the reference: on random frames of
every dtype the logs use (nulls, unicode, empty strings, NaN and infinities, NaN payloads), for keys of every length
HMAC treats differently, and on a pinned example — so every file sealed before still verifies."""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fraudpipe.seal
from fraudpipe.seal import SEAL_COLUMNS, seal, unsealed, verify_frame

KEY = b"unit-test-audit-key-0123456789abcdef"


# The reference: fraudpipe/seal.py's _canonical and _chain as first written (the format of every sealed file).
def _reference_canonical(frame: pl.DataFrame) -> Iterator[bytes]:
    names = sorted(c for c in frame.columns if c not in SEAL_COLUMNS)
    schema = frame.schema
    exact = [c for c in names if schema[c].is_integer() or schema[c].is_temporal() or schema[c] == pl.Boolean]
    floats = [c for c in names if schema[c].is_float()]
    texts = [c for c in names if c not in exact and c not in floats]
    n = frame.height

    def block(exprs: list[pl.Expr], dtype: type) -> np.ndarray:
        return frame.select(exprs).to_numpy().astype(dtype, copy=False) if exprs else np.zeros((n, 0), dtype)

    header = json.dumps(names).encode()
    nulls = np.packbits(block([pl.col(c).is_null() for c in names], np.bool_), axis=1)
    whole = block([pl.col(c).to_physical().cast(pl.Int64).fill_null(0) for c in exact], np.int64)
    real = block([pl.col(c).cast(pl.Float64).fill_null(0.0) for c in floats], np.float64)
    values = [pl.col(c).cast(pl.String).fill_null("") for c in texts]
    prefixed = [pl.concat_str(v.str.len_bytes().cast(pl.String), pl.lit(":"), v) for v in values]
    strings = frame.select(pl.concat_str(prefixed, separator="\x1f")).to_series().to_list() if texts else [""] * n
    for i, text in enumerate(strings):
        yield b"|".join((header, nulls[i].tobytes(), whole[i].tobytes(), real[i].tobytes(), text.encode()))


def reference_seals(frame: pl.DataFrame, key: bytes) -> list[str]:
    """The seals the first implementation gives ``frame`` (seal columns ignored), in row order."""
    rows = unsealed(frame)
    total, previous, seals = rows.height, b"", []
    for seq, body in enumerate(_reference_canonical(rows)):
        digest = hmac.digest(key, previous + f"|{seq}|{total}|".encode() + body, "sha256").hex()
        seals.append(digest)
        previous = digest.encode()
    return seals


# Random frames: each column a dtype of the logs (or one polars could hand us), its values with nulls.
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["", "ü", "東京", "🚀", "a\x1fb", "1:x"])
_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([math.nan, -math.nan, -0.0, math.inf])
_INT64 = st.integers(-(2**63), 2**63 - 1)
_US = st.integers(-(10**15), 10**16)  # microseconds around the epoch: years 1938 to 2286


def _nan_payload(bits: int) -> float:
    return float(np.array([0x7FF0_0000_0000_0000 | (bits & 0xF_FFFF_FFFF_FFFF) | 1], np.uint64).view(np.float64)[0])


_KINDS: dict[str, tuple[st.SearchStrategy[object], Callable[[list[object]], pl.Series]]] = {
    "string": (_TEXT, lambda v: pl.Series(v, dtype=pl.String)),
    "float64": (_FLOAT | st.integers(0, 2**52).map(_nan_payload), lambda v: pl.Series(v, dtype=pl.Float64)),
    "float32": (st.floats(width=32), lambda v: pl.Series(v, dtype=pl.Float32)),
    "int64": (_INT64, lambda v: pl.Series(v, dtype=pl.Int64)),
    "int32": (st.integers(-(2**31), 2**31 - 1), lambda v: pl.Series(v, dtype=pl.Int32)),
    "uint8": (st.integers(0, 255), lambda v: pl.Series(v, dtype=pl.UInt8)),
    "uint64": (st.integers(0, 2**63 - 1), lambda v: pl.Series(v, dtype=pl.UInt64)),
    "bool": (st.booleans(), lambda v: pl.Series(v, dtype=pl.Boolean)),
    "utc_us": (_US, lambda v: pl.Series(v, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))),
    "utc_ms": (_US, lambda v: pl.Series(v, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC"))),
    "naive_ns": (_US, lambda v: pl.Series(v, dtype=pl.Int64).cast(pl.Datetime("ns"))),
    "date": (st.integers(-(10**5), 10**5), lambda v: pl.Series(v, dtype=pl.Int32).cast(pl.Date)),
    "duration": (_INT64, lambda v: pl.Series(v, dtype=pl.Int64).cast(pl.Duration("us"))),
    "categorical": (_TEXT, lambda v: pl.Series(v, dtype=pl.Categorical)),
    "decimal": (
        st.decimals(-(10**6), 10**6, places=2, allow_nan=False),
        lambda v: pl.Series(v, dtype=pl.Decimal(10, 2)),
    ),
    "null": (st.none(), lambda v: pl.Series(v, dtype=pl.Null)),
}


_NAME = st.text(min_size=1, max_size=8).filter(lambda s: s != "*" and not (s[0] == "^" and s[-1] == "$"))
"""Any name but the two polars reads as a pattern in ``pl.col`` (the wildcard, a regex): the logs use none."""


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    """A frame of 0-40 rows and 1-10 columns of random kinds, names (unicode, seal columns' included) and nulls."""
    height = draw(st.integers(0, 40))
    names = draw(st.lists(_NAME | st.sampled_from(SEAL_COLUMNS), min_size=1, max_size=10, unique=True))
    columns = {}
    for name in names:
        values, build = _KINDS[draw(st.sampled_from(sorted(_KINDS)))]
        columns[name] = build(draw(st.lists(st.none() | values, min_size=height, max_size=height))).alias(name)
    return pl.DataFrame(columns)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames())
def test_seals_are_the_references_on_random_frames(frame: pl.DataFrame) -> None:
    sealed = seal(frame, KEY)
    assert sealed["seal"].to_list() == reference_seals(frame, KEY)
    assert verify_frame(sealed, KEY) is None


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65, 200])
def test_any_key_length_gives_the_references_seals(length: int) -> None:
    """HMAC pads keys up to SHA-256's 64-byte block and hashes longer ones first: both sides of that edge."""
    frame = pl.DataFrame({"txn_id": ["a", "b", None], "score": [0.5, math.nan, None]})
    key = bytes(range(256))[:length] * (1 + length // 256)
    assert seal(frame, key)["seal"].to_list() == reference_seals(frame, key)


def test_a_decision_shaped_frame_gives_the_references_seals() -> None:
    """Wide rows (a 1.3 kB header, text above hashlib's 2 kB GIL threshold) over several digits of ``seal_seq``."""
    rng = np.random.default_rng(7)
    n = 1200
    frame = pl.DataFrame(
        {
            **{f"f_card_feature_{i:02d}_mean_7d": rng.normal(size=n) for i in range(50)},
            **{f"text_column_{i:02d}": [f"värde-{i}-{j}" * (j % 5) for j in range(n)] for i in range(17)},
            "event_time": pl.Series(rng.integers(0, 10**15, n)).cast(pl.Datetime("us", "UTC")),
            "decided_at": pl.Series(rng.integers(0, 10**15, n)).cast(pl.Datetime("us", "UTC")),
            "degraded": rng.random(n) < 0.5,
        }
    ).with_columns(pl.col("f_card_feature_00_mean_7d").fill_nan(None), pl.col("text_column_03").replace("", None))
    assert frame.width == 70
    assert seal(frame, KEY)["seal"].to_list() == reference_seals(frame, KEY)


def test_a_frame_sealed_in_chunks_gives_the_references_seals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The canonical form is built a chunk of rows at a time (to bound a flush's memory): the chain goes on across
    chunks, and each chunk's own longest text (lengths looked up or written by polars) changes nothing."""
    monkeypatch.setattr(fraudpipe.seal, "_CHUNK", 7)
    frame = pl.DataFrame(
        {
            "txn_id": [f"TX{i}" for i in range(40)],
            "note": ["x" * (5000 if i == 20 else i) if i % 9 else None for i in range(40)],
            "score": [i / 7 if i % 5 else None for i in range(40)],
        }
    )
    sealed = seal(frame, KEY)
    assert sealed["seal"].to_list() == reference_seals(frame, KEY)
    assert verify_frame(sealed, KEY) is None
    broken = verify_frame(sealed.with_columns(score=pl.col("score") * 2), KEY)
    assert broken is not None and broken.row == 1  # row 0's score is null: doubled, still null


def test_long_texts_give_the_references_seals() -> None:
    """Lengths of 4096 bytes and more are written by polars, not looked up: both ways give the same text."""
    frame = pl.DataFrame({"note": ["é" * 2048, "x" * 5000, None, ""], "reason_codes": ["[]", "{}" * 3000, "a", None]})
    assert seal(frame, KEY)["seal"].to_list() == reference_seals(frame, KEY)
    assert seal(frame.head(1), KEY)["seal"].to_list() == reference_seals(frame.head(1), KEY)


def test_a_file_sealed_before_still_verifies() -> None:
    """Seals pinned when the format was first written: a change to either implementation shows here first."""
    frame = pl.DataFrame(
        {
            "txn_id": ["t0", "t1", None],
            "event_time": [datetime(2024, 3, 1, 10, i, tzinfo=UTC) for i in range(3)],
            "score": [0.25, None, math.inf],
            "note": ["ünïcode", "", None],
            "amount": [Decimal("1.50"), None, Decimal("-2.00")],
            "degraded": [True, None, False],
        }
    )
    pinned = [
        "a1b0e2ad60681ad3e3f93e6b6cc483106a3a6d919709c2081a27a28d124ad687",
        "f563a726541db4de5e37f2de98ca692aef7ef2ae94ff1af92417ecb42e0867c3",
        "7a91ea37421806954845b4a85eceab647c68e62abf82f1e38d1121b5075d7824",
    ]
    assert reference_seals(frame, KEY) == pinned
    assert verify_frame(frame.with_columns(seal_seq=pl.int_range(3, dtype=pl.Int64), seal_rows=pl.lit(3, pl.Int64),
                                           seal=pl.Series(pinned)), KEY) is None  # fmt: skip
    assert seal(frame, KEY)["seal"].to_list() == pinned


def test_verify_finds_the_first_row_altered_like_before() -> None:
    frame = pl.DataFrame({"txn_id": [f"t{i}" for i in range(5)], "score": [0.1 * i for i in range(5)]})
    sealed = seal(frame, KEY).with_columns(score=pl.when(pl.col("seal_seq") >= 3).then(1.0).otherwise("score"))
    broken = verify_frame(sealed, KEY)
    assert broken is not None and broken.row == 3
    nulled = seal(frame, KEY).with_columns(seal=pl.when(pl.col("seal_seq") == 1).then(None).otherwise("seal"))
    broken = verify_frame(nulled, KEY)
    assert broken is not None and broken.row == 1
