"""The one short content hash of JSON-able metadata (manifests, configs, cache keys)."""

from __future__ import annotations

import hashlib
import json


def stable_hash(obj) -> str:
    """Short sha256 of ``obj``'s canonical JSON (keys sorted; non-JSON values by ``str``)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
