"""The registry: versions, aliases, promote / rollback with their log, atomicity under concurrent writers and
readers, and refusal of every tampered artifact before it is parsed."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from features.definitions import FEATURE_NAMES
from models.registry import IntegrityError, Registry, RegistryError

FIELDS: dict[str, Any] = {
    "params": {"objective": "binary"},
    "rounds": 5,
    "windows": {},
    "metrics": {"auc": 0.9},
    "thresholds": {"review": 0.5, "decline": 0.9},
    "data_fingerprint": "test",
    "reference": {},
}


def _booster(names: list[str] | None = None, seed: int = 0) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(FEATURE_NAMES)))
    y = (x[:, 0] + rng.normal(size=300) > 1).astype(int)
    data = lgb.Dataset(x, y, feature_name=names or list(FEATURE_NAMES))
    return lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "seed": seed}, data, 5)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models")


def _model_file(registry: Registry, version: str) -> Path:
    return registry.versions_dir / version / "model.txt"


def _rehash(registry: Registry, version: str, **changes: Any) -> None:
    """Make the manifest agree with the (altered) model file: only the format and feature checks remain."""
    path = registry.versions_dir / version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model_sha256"] = hashlib.sha256(_model_file(registry, version).read_bytes()).hexdigest()
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_register_load_and_aliases(registry: Registry) -> None:
    first = registry.register(_booster(), FIELDS)
    second = registry.register(_booster(seed=1), FIELDS, report_html="<html></html>")
    assert (first.version, second.version) == ("v0001", "v0002")
    assert registry.versions() == ["v0001", "v0002"]
    assert registry.aliases() == {"champion": None, "challenger": None}
    with pytest.raises(RegistryError, match="no champion"):
        registry.load("champion")
    registry.promote("v0001", why="first")
    loaded = registry.load("champion")
    assert loaded.version == "v0001" and loaded.sha256 == first.model_sha256
    assert (registry.versions_dir / "v0002" / "report.html").read_text() == "<html></html>"
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.load("v0009")
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.promote("v0001", alias="canary", why="no")


def test_promote_and_rollback_are_recorded_and_walk_back(registry: Registry) -> None:
    for seed in range(3):
        registry.register(_booster(seed=seed), FIELDS)
    registry.promote("v0001", why="bootstrap", by="alice")
    registry.promote("v0002", why="better AP", by="bob")
    registry.promote("v0003", why="retrained", by="bob")
    assert registry.rollback(why="alert storm", by="carol") == "v0002"
    assert registry.rollback(why="still bad", by="carol") == "v0001"
    assert registry.aliases()["champion"] == "v0001"
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback(why="nothing left")
    log = registry.history()
    assert [(e["action"], e["version"], e["previous"], e["by"]) for e in log] == [
        ("promote", "v0001", None, "alice"),
        ("promote", "v0002", "v0001", "bob"),
        ("promote", "v0003", "v0002", "bob"),
        ("rollback", "v0002", "v0003", "carol"),
        ("rollback", "v0001", "v0002", "carol"),
    ]
    assert all(e["why"] and e["at"] for e in log)


def test_every_alias_change_is_told_to_the_hook_as_logged(tmp_path: Path) -> None:
    told: list[dict[str, Any]] = []
    registry = Registry(tmp_path / "models", on_change=told.append)
    for seed in range(2):
        registry.register(_booster(seed=seed), FIELDS)
    assert told == []  # registering is not an alias change
    registry.promote("v0001", why="bootstrap")
    registry.promote("v0002", alias="challenger", why="shadow it")
    registry.promote("v0002", why="better AP")
    registry.rollback(why="alert storm")
    assert told == registry.history()
    assert [(e["action"], e["alias"], e["version"]) for e in told] == [
        ("promote", "champion", "v0001"), ("promote", "challenger", "v0002"), ("promote", "champion", "v0002"),
        ("rollback", "champion", "v0001"),
    ]  # fmt: skip


def test_concurrent_registrations_get_distinct_whole_versions(registry: Registry) -> None:
    boosters = [_booster(seed=s) for s in range(6)]
    threads = [threading.Thread(target=registry.register, args=(b, FIELDS)) for b in boosters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    versions = registry.versions()
    assert versions == [f"v{i:04d}" for i in range(1, 7)]
    assert {registry.load(v).sha256 for v in versions} == {
        hashlib.sha256(b.model_to_string().encode()).hexdigest() for b in boosters
    }
    assert not list(registry.root.glob(".staging-*"))


def test_readers_never_see_a_half_written_alias_file(registry: Registry) -> None:
    registry.register(_booster(seed=0), FIELDS)
    registry.register(_booster(seed=1), FIELDS)
    registry.promote("v0001", why="start")
    seen: set[str | None] = set()
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.add(registry.aliases()["champion"])
            except Exception as error:  # a torn read would surface here
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(60):
        registry.promote("v0002" if i % 2 == 0 else "v0001", why="flip")
    done.set()
    reader.join()
    assert not errors
    assert seen <= {"v0001", "v0002"} and len(seen) == 2


def test_a_flipped_byte_is_refused_before_parsing(registry: Registry) -> None:
    version = registry.register(_booster(), FIELDS).version
    path = _model_file(registry, version)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256"):
        registry.load(version)
    with pytest.raises(IntegrityError):
        registry.promote(version, why="must not")
    assert registry.aliases()["champion"] is None


def test_a_truncated_model_is_refused(registry: Registry) -> None:
    version = registry.register(_booster(), FIELDS).version
    path = _model_file(registry, version)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(IntegrityError, match="SHA-256"):
        registry.load(version)
    _rehash(registry, version)  # even with a matching hash, a truncated model does not load
    with pytest.raises(IntegrityError, match=r"does not parse|features differ"):
        registry.load(version)


def test_a_pickle_is_never_parsed_even_with_a_matching_hash(registry: Registry) -> None:
    version = registry.register(_booster(), FIELDS).version
    _model_file(registry, version).write_bytes(pickle.dumps({"evil": True}))
    _rehash(registry, version)
    with pytest.raises(IntegrityError, match="not a LightGBM text model"):
        registry.load(version)


def test_features_in_another_order_are_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="FEATURE_NAMES"):
        registry.register(_booster(names=list(reversed(FEATURE_NAMES))), FIELDS)
    version = registry.register(_booster(), FIELDS).version
    _model_file(registry, version).write_text(_booster(names=list(reversed(FEATURE_NAMES))).model_to_string())
    _rehash(registry, version, features=list(reversed(FEATURE_NAMES)))
    with pytest.raises(IntegrityError, match="features differ"):
        registry.load(version)


def test_a_manifest_naming_another_version_is_refused(registry: Registry) -> None:
    registry.register(_booster(), FIELDS)
    registry.register(_booster(seed=1), FIELDS)
    manifest = (registry.versions_dir / "v0001" / "manifest.json").read_text()
    (registry.versions_dir / "v0002" / "manifest.json").write_text(manifest)
    with pytest.raises(IntegrityError, match="says it is v0001"):
        registry.load("v0002")
