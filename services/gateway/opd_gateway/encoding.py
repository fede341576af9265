"""One JSON encoder for every answer the gateway sends: orjson with numpy support.

Why this module exists: a /v1/support answer holds N x K log-probs; orjson writes numpy
float32 scalars in their shortest float32 form (exactly the teacher's values, without
17-digit noise) and NaN/inf as null, so the JSON is always valid, and does it an order
of magnitude faster than the standard library (benchmarks/gateway.py measures it).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_OPTIONS)


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
