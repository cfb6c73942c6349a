"""The fixture factory's disk cache: each fixture is built once into a temp folder, renamed into place, and keyed by
a hash of its inputs and of the factory's own source (tests/factory*.py and the corpus)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tests import corpus

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGEFT_CACHE", ROOT / ".cache")) / "fixtures"


def _source_hash() -> str:
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("factory*.py")) + [Path(corpus.__file__)]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


# Taken once at import: a process still running older factory code must never fill the cache under the new key.
SOURCE_HASH = _source_hash()


def _cached(kind: str, params: dict, build) -> Path:
    """Build into a temp folder and rename: concurrent test processes may race, the first rename wins."""
    key = hashlib.sha256(json.dumps([kind, params, SOURCE_HASH], sort_keys=True).encode()).hexdigest()[:16]
    target = CACHE / f"{kind}-{key}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=CACHE))
    try:
        build(tmp)
        (tmp / ".complete").write_text(json.dumps(params, sort_keys=True))
        try:
            os.replace(tmp, target)
        except OSError:
            # Someone else finished first (target exists and is not empty): theirs is identical.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

