"""The model registry: versions on disk with integrity, and the aliases workers follow.

Layout under ``settings.paths.models_dir``::

    versions/v0001/model.txt        LightGBM text model (never pickle)
    versions/v0001/manifest.json    Manifest: features in order, params, windows, metrics, thresholds, reference
                                    distributions, data fingerprint, SHA-256 of model.txt
    versions/v0001/report.html      the version's report, when one was written
    versions/v0001/card.md          the model card (models.card): intended use, data, metrics overall and per
                                    segment, fairness summary, limitations
    aliases.json                    {"champion": "v0001", "challenger": null}
    aliases.log.jsonl               every alias change: when, alias, version, previous, by, why, action

A version is written in a staging folder and renamed into ``versions/`` in one step, and ``aliases.json`` is replaced
with ``os.replace``: a reader sees a whole version and a whole alias file, or none. Writers serialize on a lock file.
:meth:`Registry.load` verifies the model file's SHA-256 *before* parsing it, refuses anything that is not a LightGBM
text model, and checks the feature names against the manifest and :data:`features.definitions.FEATURE_NAMES`.
The card and the report are documents about a version, not part of what is verified: only ``model.txt`` is hashed.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
from pydantic import ValidationError

from features.definitions import FEATURE_NAMES
from models.card import render_card
from models.manifest import LoadedModel, Manifest

__all__ = ["ALIASES", "CARD_FILE", "IntegrityError", "LoadedModel", "Manifest", "Registry", "RegistryError"]

ALIASES = ("champion", "challenger")
_VERSION = re.compile(r"^v\d{4,}$")
_MODEL_FILE = "model.txt"
CARD_FILE = "card.md"


class RegistryError(Exception):
    """An unknown version or alias, or an alias change that cannot be made."""


class IntegrityError(RegistryError):
    """A version whose files are not what its manifest says (tampered, truncated, wrong format or features)."""


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


AliasChange = Callable[[dict[str, Any]], None]
"""Told each alias change once it is written: the entry :meth:`Registry.history` keeps (``at``, ``alias``,
``version``, ``previous``, ``action``, ``by``, ``why``)."""


class Registry:
    """Versions and aliases under ``root`` (see the module docstring). ``on_change`` is told each alias change made
    through this object (the CLI announces them on ``model-events.v1``: :mod:`streams.model_events`)."""

    def __init__(self, root: Path, *, on_change: AliasChange | None = None) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.on_change = on_change

    # --- writing ----------------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def register(self, booster: lgb.Booster, fields: dict[str, Any], report_html: str | None = None, *,
                 segment_metrics: dict[str, Any] | None = None) -> Manifest:  # fmt: skip
        """Store ``booster`` as a new version; ``fields`` are the Manifest's other fields. Returns its manifest.

        The version's model card is written with it, showing ``segment_metrics`` (as
        :func:`models.fairness.card_segments` gives them) or saying that no segment data was supplied.

        Raises:
            RegistryError: the booster's features are not FEATURE_NAMES.
        """
        if list(booster.feature_name()) != list(FEATURE_NAMES):
            raise RegistryError("the booster's features are not features.definitions.FEATURE_NAMES in order")
        fields = dict(fields)
        created_by = fields.pop("created_by", None) or getpass.getuser()
        text = booster.model_to_string().encode()
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            _write_atomic(staging / _MODEL_FILE, text)
            if report_html is not None:
                _write_atomic(staging / "report.html", report_html.encode())
            while True:
                number = max((int(v[1:]) for v in self.versions()), default=0) + 1
                version = f"v{number:04d}"
                manifest = Manifest(
                    version=version,
                    created_at=datetime.now(UTC),
                    created_by=created_by,
                    model_sha256=hashlib.sha256(text).hexdigest(),
                    lightgbm_version=lgb.__version__,
                    features=list(FEATURE_NAMES),
                    **fields,
                )
                _write_atomic(staging / "manifest.json", manifest.model_dump_json(indent=2).encode())
                _write_atomic(staging / CARD_FILE, render_card(manifest, segment_metrics).encode())
                try:
                    staging.rename(self.versions_dir / version)
                except OSError:  # another writer took this number: try the next one
                    continue
                return manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _change(self, alias: str, version: str | None, *, by: str | None, why: str,
                action: str) -> dict[str, Any]:  # fmt: skip
        aliases = self.aliases()
        previous = aliases.get(alias)
        aliases[alias] = version
        _write_atomic(self.root / "aliases.json", json.dumps(aliases, indent=2).encode())
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "alias": alias,
            "version": version,
            "previous": previous,
            "action": action,
            "by": by or getpass.getuser(),
            "why": why,
        }
        with (self.root / "aliases.log.jsonl").open("a") as log:
            log.write(json.dumps(entry) + "\n")
            log.flush()
            os.fsync(log.fileno())
        return entry

    def promote(self, version: str, *, alias: str = "champion", by: str | None = None, why: str) -> None:
        """Point ``alias`` at ``version`` (verified first: a broken version is never promoted).

        Raises:
            RegistryError / IntegrityError: unknown alias or version, or a version that does not verify.
        """
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r} (known: {', '.join(ALIASES)})")
        self.load(version)
        with self._locked():
            entry = self._change(alias, version, by=by, why=why, action="promote")
        if self.on_change is not None:
            self.on_change(entry)

    def rollback(self, *, alias: str = "champion", by: str | None = None, why: str) -> str:
        """Point ``alias`` back at the version it had before its current one; returns that version.

        Raises:
            RegistryError: nothing to roll back to.
        """
        with self._locked():
            stack = self._stack(alias)
            if len(stack) < 2:
                raise RegistryError(f"{alias} has no earlier version to roll back to")
            entry = self._change(alias, stack[-2], by=by, why=why, action="rollback")
        if self.on_change is not None:
            self.on_change(entry)
        return stack[-2]

    def _stack(self, alias: str) -> list[str]:
        """Versions ``alias`` has pointed at, oldest first, rollbacks undone (replayed from the log)."""
        stack: list[str] = []
        for entry in self.history():
            if entry["alias"] != alias:
                continue
            if entry["action"] == "rollback":
                stack.pop()
            else:
                stack.append(entry["version"])
        return stack

    # --- reading ----------------------------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Every stored version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if _VERSION.match(p.name)]
        return sorted(names, key=lambda name: int(name[1:]))

    def aliases(self) -> dict[str, str | None]:
        """Each alias and the version it points at (``None``: unset)."""
        path = self.root / "aliases.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        return {alias: stored.get(alias) for alias in ALIASES}

    def history(self) -> list[dict[str, Any]]:
        """Every alias change, oldest first."""
        path = self.root / "aliases.log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def resolve(self, ref: str) -> str:
        """The version ``ref`` names: a version (``v0003``) or an alias.

        Raises:
            RegistryError: unknown version, or an alias that is unset.
        """
        if ref in ALIASES:
            version = self.aliases()[ref]
            if version is None:
                raise RegistryError(f"no {ref} yet (fraudpipe model promote VERSION)")
            return version
        if not (self.versions_dir / ref).is_dir():
            raise RegistryError(f"unknown model version {ref!r}")
        return ref

    def manifest(self, ref: str) -> Manifest:
        """The manifest of ``ref`` (not verified against the model file: use :meth:`load` to serve).

        Raises:
            RegistryError / IntegrityError: unknown, or a manifest that does not parse.
        """
        version = self.resolve(ref)
        path = self.versions_dir / version / "manifest.json"
        try:
            manifest = Manifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as error:
            raise IntegrityError(f"{version}: unreadable manifest ({str(error).splitlines()[0]})") from None
        if manifest.version != version:
            raise IntegrityError(f"{version}: its manifest says it is {manifest.version}")
        return manifest

    def card(self, ref: str) -> str:
        """The model card of ``ref``: its ``card.md``, or for a version registered before cards, one rendered from
        its manifest (without segment metrics).

        Raises:
            RegistryError / IntegrityError: unknown, or a manifest that does not parse.
        """
        manifest = self.manifest(ref)
        path = self.versions_dir / manifest.version / CARD_FILE
        return path.read_text() if path.exists() else render_card(manifest)

    def load(self, ref: str) -> LoadedModel:
        """The verified model of ``ref`` (version or alias).

        Raises:
            IntegrityError: hash mismatch, not a LightGBM text model, or features other than the manifest's and
                FEATURE_NAMES.
            RegistryError: unknown version or unset alias.
        """
        manifest = self.manifest(ref)
        version = manifest.version
        try:
            data = (self.versions_dir / version / manifest.model_file).read_bytes()
        except OSError as error:
            raise IntegrityError(f"{version}: model file unreadable ({error.strerror})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest.model_sha256:
            raise IntegrityError(f"{version}: model file SHA-256 {digest[:12]}… differs from the manifest's")
        if data[:1] == b"\x80" or not data.startswith(b"tree\n"):
            raise IntegrityError(f"{version}: not a LightGBM text model (refusing to parse it)")
        try:
            booster = lgb.Booster(model_str=data.decode())
        except (lgb.basic.LightGBMError, UnicodeDecodeError) as error:
            raise IntegrityError(f"{version}: model does not parse ({str(error).splitlines()[0]})") from None
        names = list(booster.feature_name())
        if names != manifest.features or names != list(FEATURE_NAMES):
            raise IntegrityError(f"{version}: model features differ from the manifest or FEATURE_NAMES")
        return LoadedModel(manifest, booster)
