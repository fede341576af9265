"""GET /v1/info: which teacher answers, its limits, and the gateway's own.

Why this module exists: the page reads max_top_k and the model name from here, and a
person checks the fingerprint before trusting two answers to come from one teacher.
It is the teacher's GetInfo (cached with the tokenizer by `TeacherView`), as JSON.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from opd_gateway.deps import MetaDep, StateDep, require_token
from opd_gateway.encoding import OrjsonResponse
from opd_gateway.schemas import ErrorResponse, InfoResponse

router = APIRouter(
    prefix="/v1",
    tags=["info"],
    dependencies=[Depends(require_token)],
    responses={
        401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
        503: {"model": ErrorResponse, "description": "the teacher is unreachable"},
    },
)


@router.get("/info", response_model=InfoResponse, response_class=OrjsonResponse)
async def info(meta: MetaDep, state: StateDep) -> OrjsonResponse:
    """The teacher's GetInfo, plus the gateway's limits (`gateway_*`)."""
    teacher = meta.info
    return OrjsonResponse(
        {
            "model": teacher.model,
            "fingerprint": teacher.fingerprint,
            "backend": teacher.backend,
            "backend_version": teacher.backend_version,
            "vocab_size": teacher.vocab_size,
            "tokenizer_size": teacher.tokenizer_size,
            "max_top_k": teacher.max_top_k,
            "max_sequence_length": teacher.max_sequence_length,
            "supports_extra_ids": teacher.supports_extra_ids,
            "special_tokens": [
                {"role": t.role, "id": t.id, "text": t.text} for t in teacher.special_tokens
            ],
            "tokenizer_sha256": teacher.tokenizer_sha256,
            "contract_version": teacher.contract_version,
            "gateway_max_text_chars": state.settings.max_text_chars,
            "gateway_max_body_bytes": state.settings.max_body_bytes,
            "gateway_auth": state.auth_token is not None,
        }
    )
