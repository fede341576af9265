"""The digest of a teacher's tokenizer files, computed the same way on both sides.

`TeacherInfo.tokenizer_sha256` is this digest, so a client that reassembled the files
from `GetTokenizer` can verify them, and cache them under the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def tokenizer_digest(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 (hex) over (name, NUL, length, NUL, bytes) of each file, in the given order."""
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(str(len(data)).encode())
        digest.update(b"\0")
        digest.update(data)
    return digest.hexdigest()
