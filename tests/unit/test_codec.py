"""The canonical encoder."""

from __future__ import annotations

from fraudpipe.codec import encode
from tests import factories


def test_encode_stays_the_canonical_form() -> None:
    assert encode(factories.decision()).startswith(b'{"schema_version":1,"txn_id":"txn-000001","card_token":')
