"""Fixtures shared by every test folder."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def unique() -> str:
    """A short token unique to this test: prefix topics, consumer groups and Redis keys with it."""
    return uuid.uuid4().hex[:10]
