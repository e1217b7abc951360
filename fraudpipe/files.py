"""Transaction files in, validated events out: the simulator's folders and external CSV / Parquet / JSONL files.

A source is read in chunks (never whole, except a simulator folder's labels, ~1 % of its rows). Each chunk is
mapped to the contract's field names (``--map txn_id=ID,event_time=TS,card_id=CARD,terminal_id=TERM,amount=AMT,
label=FRAUD``), converted with vectorized casts, and every row is validated against the contract. A row that fails
becomes a :class:`Reject` with its line number (CSV: the file's line, header = line 1; other formats: the 1-based
row) and reason; the rest goes on.

The ingestion edge: a card identifier that is a PAN (13-19 digits passing Luhn) is replaced by its keyed token, BIN
and last four here, before anything is produced or written. Other identifiers pass through as card keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import ValidationError

from fraudpipe.codec import DecodeError, decode
from fraudpipe.contracts import Label, Reason, Transaction
from fraudpipe.fastcheck import certainly_valid
from fraudpipe.pan import is_pan, mask_pans, tokenize_pan

__all__ = [
    "OPTIONAL_TARGETS",
    "REQUIRED_TARGETS",
    "Chunk",
    "LabelBatch",
    "MappingError",
    "Reject",
    "SourceError",
    "TransactionSource",
    "derived_labels",
    "encode_transactions",
    "open_source",
    "parse_mapping",
    "parse_time",
]

REQUIRED_TARGETS = ("txn_id", "event_time", "card_id", "amount")
"""Plus ``terminal_id`` or ``merchant_id``."""
OPTIONAL_TARGETS = (
    *(name for name in Transaction.model_fields if name not in {"schema_version", "card_token", *REQUIRED_TARGETS}),
    "label",
)
"""Every other contract field, and the label column (ground truth that becomes delayed Label events)."""
_CONTRACT_FIELDS = tuple(name for name in Transaction.model_fields if name != "schema_version")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
_TRUE = {"1", "true", "t", "yes", "y", "fraud", "1.0"}
_FALSE = {"0", "false", "f", "no", "n", "genuine", "legit", "0.0"}


class SourceError(ValueError):
    """A source that cannot be read at all (missing file, unknown format, missing mapped column)."""


class MappingError(SourceError):
    """A ``--map`` text that does not parse or names unknown targets."""


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that did not validate: where it was, why, and the row itself with any PAN masked."""

    line: int
    reason: Reason
    detail: str
    row: str

    def to_json(self) -> str:
        return json.dumps({"line": self.line, "reason": self.reason.value, "detail": self.detail, "row": self.row})


@dataclass(slots=True)
class Chunk:
    """Validated rows of one chunk, in event-time order.

    ``values`` are the encoded transactions (contract JSON), ``keys`` their card tokens, ``event_us`` their event
    times (µs since the epoch, int64), ``fraud`` the label column where the file has one (else all False).
    """

    values: list[bytes]
    keys: list[bytes]
    event_us: np.ndarray
    fraud: np.ndarray
    frame: pl.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    labels: LabelBatch | None = None
    """Labels derived from the chunk's label column (external files with ``label``), sorted by ``known_at``."""


@dataclass(slots=True)
class LabelBatch:
    """Encoded Label events sorted by ``known_at``: values, keys (card tokens), known_at (µs since the epoch)."""

    values: list[bytes]
    keys: list[bytes]
    known_us: np.ndarray
    rejects: list[Reject] = field(default_factory=list)


def parse_mapping(text: str | None) -> dict[str, str]:
    """``"target=column,..."`` to ``{target: column}``. ``None`` or empty means the file already uses target names.

    Raises:
        MappingError: malformed pair, unknown target, or a target given twice.
    """
    if not text:
        return {}
    mapping: dict[str, str] = {}
    known = set(REQUIRED_TARGETS) | set(OPTIONAL_TARGETS)
    for pair in text.split(","):
        target, sep, column = (part.strip() for part in pair.partition("="))
        if not sep or not target or not column:
            raise MappingError(f"--map expects target=column pairs separated by commas; got {pair!r}")
        if target not in known:
            raise MappingError(f"--map: unknown target {target!r} (known: {', '.join(sorted(known))})")
        if target in mapping:
            raise MappingError(f"--map: target {target!r} given twice")
        mapping[target] = column
    return mapping


@dataclass
class TransactionSource:
    """A readable source of transactions (and, for a simulator folder, of its labels).

    Build it with :func:`open_source`; iterate :meth:`chunks`; :meth:`labels` gives the Label events to publish
    (from the folder's label files, or derived from the label column with ``label_delay``).
    """

    path: Path
    kind: str  # "simulation" | "csv" | "parquet" | "jsonl"
    mapping: dict[str, str]
    key: bytes
    timezone: str = "UTC"
    currency: str = "EUR"
    chunk_rows: int = 100_000
    label_delay: timedelta = timedelta(days=7)
    total_rows: int | None = None
    since: datetime | None = None
    """Only payments at or after this time (UTC), with their labels; ``None``: from the first."""
    until: datetime | None = None
    """Only payments before this time (UTC), with their labels; ``None``: to the last."""

    @property
    def window(self) -> str | None:
        """``since/until`` as ISO times (``..`` for an open end), or ``None`` for the whole source."""
        if self.since is None and self.until is None:
            return None
        return "/".join(".." if t is None else t.isoformat() for t in (self.since, self.until))

    def _in_window(self, day: date) -> bool:
        """Whether a simulator day partition may hold payments of the window."""
        return (self.since is None or day >= self.since.date()) and (self.until is None or day <= self.until.date())

    def _window_mask(self, times: pl.Series) -> np.ndarray:
        """Rows of ``times`` inside the window; a row without a time counts as inside (its reject is reported)."""
        inside = pl.Series([True] * len(times))
        if self.since is not None:
            inside &= (times >= self.since).fill_null(True)
        if self.until is not None:
            inside &= (times < self.until).fill_null(True)
        return inside.to_numpy()

    # --- reading ----------------------------------------------------------------------------------------------

    def parts(self) -> list[Path]:
        """A simulator folder's transaction files holding days of the window, in day order."""
        parts = sorted((self.path / "transactions").glob("day=*/part-*.parquet"))
        return [part for part in parts if self._in_window(date.fromisoformat(part.parent.name.removeprefix("day=")))]

    def _raw_frames(self) -> Iterator[tuple[pl.DataFrame, int]]:
        """(frame, number of the first row's line) per chunk, columns as in the file."""
        if self.kind == "simulation":
            pending: list[pl.DataFrame] = []
            row = 1
            for part in self.parts():
                pending.append(pl.read_parquet(part))
                if sum(frame.height for frame in pending) >= self.chunk_rows:
                    yield pl.concat(pending), row
                    row += sum(frame.height for frame in pending)
                    pending = []
            if pending:
                yield pl.concat(pending), row
        else:
            lazy = {
                "csv": lambda: pl.scan_csv(self.path, infer_schema=False),
                "parquet": lambda: pl.scan_parquet(self.path),
                "jsonl": lambda: pl.scan_ndjson(self.path),
            }[self.kind]()
            first = 2 if self.kind == "csv" else 1  # a CSV's first data row is line 2, after the header
            for frame in lazy.collect_batches(chunk_size=self.chunk_rows):
                yield frame, first
                first += frame.height

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk of the source, validated; rows sorted by event time within a chunk."""
        for raw, first_line in self._raw_frames():
            yield self._convert(raw, first_line)

    # --- conversion -------------------------------------------------------------------------------------------

    def _mapped(self, raw: pl.DataFrame) -> pl.DataFrame:
        columns = {}
        names = set(raw.columns)
        for target in (*REQUIRED_TARGETS, *OPTIONAL_TARGETS):
            source = self.mapping.get(target, target)
            if target == "card_id" and target not in self.mapping and "card_id" not in names:
                source = "card_token"
            if source in names:
                columns[target] = raw.get_column(source)
            elif target in self.mapping:
                raise SourceError(f"{self.path}: mapped column {source!r} (for {target}) is not in the file")
        missing = [t for t in REQUIRED_TARGETS if t not in columns]
        if missing or ("terminal_id" not in columns and "merchant_id" not in columns):
            need = missing or ["terminal_id or merchant_id"]
            raise SourceError(f"{self.path}: no column for {', '.join(need)} (use --map target=column)")
        return pl.DataFrame(columns)

    def _event_time(self, column: pl.Series) -> pl.Series:
        if column.dtype == pl.String:
            column = column.str.strip_chars().str.to_datetime(time_unit="us", strict=False)
        elif column.dtype.is_numeric():
            column = pl.from_epoch((column.cast(pl.Float64) * 1_000_000).cast(pl.Int64), time_unit="us")
        if not isinstance(column.dtype, pl.Datetime):
            return pl.Series(column.name, [None] * len(column), dtype=pl.Datetime("us", "UTC"))
        if column.dtype.time_zone is None:
            column = column.dt.replace_time_zone(self.timezone, ambiguous="earliest", non_existent="null")
        return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")

    def _tokenize(self, cards: pl.Series) -> pl.DataFrame:
        """card_token / card_bin / card_last4 for each card id: PANs tokenized, other ids passed through."""
        unique = cards.drop_nulls().unique().to_list()
        refs = {card: tokenize_pan(card, self.key) for card in unique if is_pan(card)}
        if not refs:
            return pl.DataFrame({"card_token": cards, "card_bin": None, "card_last4": None})
        lookup = pl.DataFrame(
            {
                "card_id": list(refs),
                "card_token": [r.token for r in refs.values()],
                "card_bin": [r.bin for r in refs.values()],
                "card_last4": [r.last4 for r in refs.values()],
            }
        )
        joined = pl.DataFrame({"card_id": cards}).join(lookup, on="card_id", how="left", maintain_order="left")
        return joined.select(pl.coalesce("card_token", "card_id").alias("card_token"), "card_bin", "card_last4")

    def _convert(self, raw: pl.DataFrame, first_line: int) -> Chunk:
        mapped = self._mapped(raw)
        n = mapped.height
        problems: list[tuple[int, Reason, str]] = []

        def cast(name: str, dtype: pl.DataType) -> pl.Series | None:
            if name not in mapped.columns:
                return None
            original = mapped.get_column(name)
            if original.dtype == pl.String:
                original = original.str.strip_chars().replace("", None)
            converted = original.cast(dtype, strict=False)
            if converted.dtype.is_float():
                not_finite = (converted.is_nan() | converted.is_infinite()).fill_null(False)
                for index in np.flatnonzero(not_finite.to_numpy()):
                    problems.append((int(index), Reason.INVALID_NUMBER, f"{name}: not a finite number"))
                converted = converted.set(not_finite, None)
            for index in np.flatnonzero((converted.is_null() & original.is_not_null()).to_numpy()):
                problems.append(
                    (int(index), Reason.WRONG_TYPE, f"{name}: {str(original[int(index)])[:40]!r} is not a {dtype}")
                )
            return converted

        cards = cast("card_id", pl.String())
        assert cards is not None
        tokens = self._tokenize(cards)
        event_time = self._event_time(mapped.get_column("event_time"))
        for index in np.flatnonzero((event_time.is_null() & mapped.get_column("event_time").is_not_null()).to_numpy()):
            problems.append((int(index), Reason.INVALID_VALUE, "event_time: not a date-time"))
        columns: dict[str, pl.Series | None] = {
            "txn_id": cast("txn_id", pl.String()),
            "event_time": event_time,
            "card_token": tokens.get_column("card_token"),
            "card_bin": _coalesce(tokens.get_column("card_bin"), cast("card_bin", pl.String())),
            "card_last4": _coalesce(tokens.get_column("card_last4"), cast("card_last4", pl.String())),
            "amount": cast("amount", pl.Float64()),
            "currency": cast("currency", pl.String())
            if "currency" in mapped.columns
            else pl.Series([self.currency] * n),
            "lat": cast("lat", pl.Float64()),
            "lon": cast("lon", pl.Float64()),
        }
        for name in OPTIONAL_TARGETS:
            if name not in columns and name != "label":
                columns[name] = cast(name, pl.String())
        frame = pl.DataFrame(
            {
                name: (
                    columns.get(name) if columns.get(name) is not None else pl.Series(name, [None] * n, dtype=pl.String)
                )
                for name in _CONTRACT_FIELDS
            }
        ).with_columns(pl.col("lat", "lon").cast(pl.Float64))
        fraud = self._labels_column(mapped, problems)
        frame = frame.with_columns(_line=pl.int_range(first_line, first_line + n, dtype=pl.Int64), _fraud=fraud)
        return self._validate(raw, frame, problems, first_line)

    def _labels_column(self, mapped: pl.DataFrame, problems: list[tuple[int, Reason, str]]) -> pl.Series:
        if "label" not in mapped.columns:
            return pl.Series("_fraud", [False] * mapped.height)
        column = mapped.get_column("label")
        if column.dtype == pl.Boolean:
            return column.fill_null(False).alias("_fraud")
        text = column.cast(pl.String).str.strip_chars().str.to_lowercase()
        truth = text.is_in(list(_TRUE))
        unknown = ~(truth | text.is_in(list(_FALSE)) | text.is_null())
        for index in np.flatnonzero(unknown.to_numpy()):
            problems.append((int(index), Reason.INVALID_VALUE, f"label: {str(text[int(index)])[:20]!r} is not 0/1"))
        return truth.fill_null(False).alias("_fraud")

    def _validate(self, raw: pl.DataFrame, frame: pl.DataFrame, problems: list[tuple[int, Reason, str]],
                  first_line: int) -> Chunk:  # fmt: skip
        inside = self._window_mask(frame.get_column("event_time"))
        bad: dict[int, tuple[Reason, str]] = {}
        for index, reason, detail in problems:
            if inside[index]:
                bad.setdefault(index, (reason, detail))
        encoded = encode_transactions(frame)
        flagged = np.zeros(frame.height, dtype=bool)
        flagged[list(bad)] = True
        # Rows the vectorized pre-check vouches for skip per-row validation; the others ask the contract itself.
        keep = certainly_valid(frame.select(_CONTRACT_FIELDS)).to_numpy() & ~flagged & inside
        for slow in np.flatnonzero(~keep & ~flagged & inside).tolist():
            index = int(slow)
            value = encoded[index]
            try:  # keys come from frame columns and cannot repeat: the contract's validation is all that is needed
                Transaction.model_validate_json(value, strict=True)
            except ValidationError as error:
                refused = _as_decode_error(error, value)
                bad[int(index)] = (refused.reason, refused.detail)
                continue
            keep[index] = True
        rejects = [
            Reject(first_line + index, reason, detail, _masked_row(raw, index))
            for index, (reason, detail) in sorted(bad.items())
        ]
        valid = frame.with_columns(_value=encoded).filter(pl.Series(keep)).sort("event_time", maintain_order=True)
        derived = (
            None
            if self.kind == "simulation"
            else _encode_labels(derived_labels(valid.filter(pl.col("_fraud")), self.label_delay))
        )
        return Chunk(
            values=valid.get_column("_value").to_list(),
            keys=[token.encode() for token in valid.get_column("card_token").to_list()],
            event_us=valid.get_column("event_time").dt.epoch("us").to_numpy(),
            fraud=valid.get_column("_fraud").to_numpy(),
            frame=valid,
            rejects=rejects,
            labels=derived,
        )

    # --- labels -----------------------------------------------------------------------------------------------

    def labels(self) -> LabelBatch:
        """The label files of a simulator folder, encoded and sorted by ``known_at`` (empty for other sources,
        whose labels come with each chunk: :attr:`Chunk.labels`)."""
        return _encode_labels(self.label_frame())

    def label_frame(self) -> pl.DataFrame:
        """The label files of a simulator folder as one frame (Label fields, sorted by ``known_at``): those of the
        payments in the window; empty for other sources (see :func:`derived_labels`)."""
        if self.kind != "simulation":
            return _EMPTY_LABELS
        parts = sorted((self.path / "labels").glob("day=*/part-*.parquet"))
        if not parts:
            return _EMPTY_LABELS
        frame = pl.concat([pl.read_parquet(p) for p in parts]).select(_EMPTY_LABELS.columns)
        frame = frame.filter(pl.Series(self._window_mask(frame.get_column("event_time"))))
        return frame.sort("known_at", "txn_id", "label_version", maintain_order=True)


def derived_labels(frauds: pl.DataFrame, delay: timedelta) -> pl.DataFrame:
    """Label rows for the fraudulent payments ``frauds`` (contract columns), each known ``delay`` after it."""
    after = pl.duration(microseconds=int(delay.total_seconds() * 1_000_000))
    return frauds.select(
        "txn_id",
        "card_token",
        "event_time",
        (pl.col("event_time") + after).alias("known_at"),
        pl.lit(True).alias("is_fraud"),
        pl.lit("chargeback").alias("source"),
        pl.lit(1, dtype=pl.Int32).alias("label_version"),
        "terminal_id",
        "merchant_id",
    )


_EMPTY_LABELS = pl.DataFrame(
    schema={
        "txn_id": pl.String,
        "card_token": pl.String,
        "event_time": pl.Datetime("us", "UTC"),
        "known_at": pl.Datetime("us", "UTC"),
        "is_fraud": pl.Boolean,
        "source": pl.String,
        "label_version": pl.Int32,
        "terminal_id": pl.String,
        "merchant_id": pl.String,
    }
)
_LABEL_FIELDS = tuple(name for name in Label.model_fields if name not in {"schema_version", "note"})


def _encode_labels(frame: pl.DataFrame) -> LabelBatch:
    frame = frame.sort("known_at", "txn_id", "label_version", maintain_order=True)
    encoded = (
        frame.select(
            pl.struct(
                [
                    pl.col(n).dt.strftime(_TIME_FORMAT) if n in {"event_time", "known_at"} else pl.col(n)
                    for n in _LABEL_FIELDS
                ]
            ).struct.json_encode()
        )
        .to_series()
        .to_list()
    )
    values, keys, known, rejects = [], [], [], []
    known_us = frame.get_column("known_at").dt.epoch("us").to_numpy()
    tokens = frame.get_column("card_token").to_list()
    for index, text in enumerate(encoded):
        value = text.encode()
        try:
            decode(value, Label)
        except DecodeError as error:
            rejects.append(Reject(index + 1, error.reason, f"label: {error.detail}", mask_pans(value).decode()))
            continue
        values.append(value)
        keys.append(tokens[index].encode())
        known.append(known_us[index])
    return LabelBatch(values, keys, np.array(known, dtype=np.int64), rejects)


def encode_transactions(frame: pl.DataFrame) -> pl.Series:
    """Contract JSON (Binary) of each row of ``frame``, whose columns include every Transaction field."""
    fields = [pl.col(n).dt.strftime(_TIME_FORMAT) if n == "event_time" else pl.col(n) for n in _CONTRACT_FIELDS]
    return frame.select(pl.struct(fields).struct.json_encode().cast(pl.Binary)).to_series()


def _coalesce(first: pl.Series, second: pl.Series | None) -> pl.Series:
    """``first`` with its nulls filled from ``second`` (when there is a second)."""
    return first if second is None else first.fill_null(second)


def _as_decode_error(error: ValidationError, value: bytes) -> DecodeError:
    try:
        decode(value, Transaction)
    except DecodeError as decoded:
        return decoded
    return DecodeError(Reason.INVALID_VALUE, str(error).splitlines()[0])


def _masked_row(raw: pl.DataFrame, index: int) -> str:
    row = {
        k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
        for k, v in raw.row(index, named=True).items()
    }
    return mask_pans(json.dumps(row, ensure_ascii=False).encode()).decode()


def _count_csv_rows(path: Path) -> int:
    lines = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            lines += block.count(b"\n")
    return max(lines - 1, 0)


def open_source(
    path: Path,
    mapping: dict[str, str],
    *,
    key: bytes,
    timezone: str = "UTC",
    currency: str = "EUR",
    label_delay: timedelta = timedelta(days=7),
    chunk_rows: int = 100_000,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TransactionSource:
    """A source for ``path``: a simulator output folder, or a ``.csv`` / ``.parquet`` / ``.jsonl`` file; with
    ``since`` / ``until`` (aware times), only the payments of that window and their labels (a simulator folder's day
    partitions outside it are not read; rows outside it are not rejects, whatever else is wrong with them).

    Raises:
        SourceError: the path does not exist, its format is unknown, or ``since`` is not before ``until``.
    """
    if since is not None and until is not None and since >= until:
        raise SourceError(f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})")
    window = {"since": since, "until": until}
    if path.is_dir():
        if not (path / "transactions").is_dir():
            raise SourceError(f"{path}: a folder must be a simulator output (with transactions/ inside)")
        manifest = path / "manifest.json"
        total = json.loads(manifest.read_text()).get("transactions") if manifest.exists() else None
        truth = {"label": "is_fraud"}  # the folder's ground truth; its labels come from its own label files
        total = None if since or until else total  # a window's rows are not counted before reading
        return TransactionSource(path, "simulation", truth, key, timezone, currency, chunk_rows, label_delay, total,
                                 **window)  # fmt: skip
    if not path.is_file():
        raise SourceError(f"{path}: no such file or folder")
    suffix = "".join(path.suffixes[-1:]).lower()
    kinds = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
    if suffix not in kinds:
        raise SourceError(f"{path}: unknown format {suffix!r} (use .csv, .parquet or .jsonl)")
    kind = kinds[suffix]
    total = (
        _count_csv_rows(path)
        if kind == "csv"
        else pl.scan_parquet(path).select(pl.len()).collect().item()
        if kind == "parquet"
        else None
    )
    total = None if since or until else total
    return TransactionSource(path, kind, mapping, key, timezone, currency, chunk_rows, label_delay, total, **window)


def parse_time(text: str, option: str) -> datetime:
    """An ISO date or date-time given as ``option`` (``--since``, ``--until``), UTC when it names no zone.

    Raises:
        SourceError: not an ISO date or date-time.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SourceError(f"{option} expects an ISO date or date-time (2018-08-01, 2018-08-01T12:00); "
                          f"got {text!r}") from None  # fmt: skip
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
