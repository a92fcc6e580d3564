"""Seeds derived from keys, for random streams that must not depend on process, rank or worker."""
from __future__ import annotations

import hashlib


def derive_seed(*keys) -> int:
    """A 63-bit seed from any printable keys (stable across processes and Python versions)."""
    h = hashlib.sha256("/".join(str(k) for k in keys).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)
