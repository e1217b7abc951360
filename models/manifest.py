"""A registered version's manifest — what it is: enough to verify it, serve it and judge it (``manifest.json`` next to
``model.txt``, :mod:`models.registry`) — and a version loaded to score. Their own module, so the registry, the model
card (:mod:`models.card`) and the scorer (:mod:`models.scorer`) read them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import lightgbm as lgb

__all__ = ["LoadedModel", "Manifest"]


class Manifest(BaseModel):
    """What a version is: enough to verify it, serve it and judge it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    created_at: datetime
    created_by: str
    model_file: Literal["model.txt"] = "model.txt"
    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    lightgbm_version: str
    features: list[str]
    params: dict[str, Any]
    rounds: int
    windows: dict[str, Any]
    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    data_fingerprint: str
    reference: dict[str, Any]
    tuning: dict[str, Any] = Field(default_factory=dict)
    """The ``fraudpipe tune`` study its parameters came from (:func:`models.tune.summary`); empty: the settings'."""
    fairness_constraint: dict[str, Any] = Field(default_factory=dict)
    """The fairness constraint it was trained under and the choice made (:func:`models.constraint.constrain`);
    empty: none."""
    notes: str = ""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A verified version, ready to score."""

    manifest: Manifest
    booster: lgb.Booster

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def sha256(self) -> str:
        return self.manifest.model_sha256
