"""POST /v1/support and /v1/compare: the teacher's view of a text, per token.

Why this module exists: it is the HTTP transport of `support.py` — it checks the
request against the limits the teacher's GetInfo and the settings give, makes one
`Score` call per text (`return_token_logprobs=True`), maps gRPC failures to HTTP
(`errors.py`) and encodes the rows once. The row arithmetic itself is in `support.py`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
from fastapi import APIRouter, Depends

from opd_client import TeacherClient
from opd_gateway.deps import ClientDep, GatewayState, MetaDep, SlotDep, StateDep, require_token
from opd_gateway.encoding import OrjsonResponse
from opd_gateway.errors import from_rpc_error, invalid
from opd_gateway.limits import StrictJsonRoute
from opd_gateway.schemas import CompareRequest, CompareResponse, ErrorResponse, SupportRequest
from opd_gateway.schemas import SupportResponse as SupportResponseModel
from opd_gateway.support import build_support
from opd_gateway.teacher_view import TeacherMeta

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        401: "missing or wrong bearer token (gateway or teacher)",
        413: "body larger than max_body_bytes",
        422: "invalid input; `detail` names the field (the teacher's message when it found it)",
        429: "too many requests in flight for this client, or the teacher's queue is full; "
        "see Retry-After",
        503: "the teacher is unreachable, loading or draining",
        504: "the teacher did not answer within the deadline",
    }.items()
}

router = APIRouter(
    prefix="/v1",
    tags=["support"],
    route_class=StrictJsonRoute,
    dependencies=[Depends(require_token)],
    responses=_ERRORS,
)


def _check_limits(
    meta: TeacherMeta, max_text_chars: int, top_k: int, texts: list[tuple[str, str]]
) -> None:
    if top_k > meta.info.max_top_k:
        raise invalid("top_k", f"{top_k} is not in 1..max_top_k {meta.info.max_top_k}")
    for field, text in texts:
        if len(text) > max_text_chars:
            raise invalid(field, f"{len(text)} characters exceed max_text_chars {max_text_chars}")


async def score_one(
    state: GatewayState,
    client: TeacherClient,
    meta: TeacherMeta,
    *,
    text: str | None,
    token_ids: list[int] | None,
    top_k: int,
    score_from: int,
    surprise_threshold: float,
    student_logprobs: list[float | None] | None = None,
) -> dict[str, Any]:
    """One Score call, turned into the dict that `SupportResponse` documents."""
    try:
        out = await client.score(
            token_ids,
            text=text,
            top_k=top_k,
            score_from=score_from,
            return_token_logprobs=True,
        )
    except grpc.RpcError as error:
        gateway_error = from_rpc_error(error, state.settings.teacher)
        state.metrics.teacher_errors.labels(gateway_error.code).inc()
        raise gateway_error from error
    if text is not None:
        assert out.token_ids_N is not None and out.offsets_N2 is not None
        ids_N = out.token_ids_N
        starts_N, ends_N = out.offsets_N2[:, 0], out.offsets_N2[:, 1]
        shown = text
    else:
        assert token_ids is not None
        ids_N = np.asarray(token_ids, dtype=np.int32)
        shown, starts_N, ends_N = meta.spans(token_ids)
    num_tokens = int(ids_N.shape[0])
    if student_logprobs is not None and len(student_logprobs) != num_tokens:
        raise invalid(
            "student_logprobs",
            f"holds {len(student_logprobs)} values, expected one per token ({num_tokens})",
        )
    tokens, after_last, summary = build_support(
        pieces=meta.pieces,
        out=out,
        token_ids_N=ids_N,
        starts_N=starts_N,
        ends_N=ends_N,
        score_from=score_from,
        surprise_threshold=surprise_threshold,
        student_logprobs=student_logprobs,
    )
    state.metrics.tokens.inc(num_tokens)
    return {
        "model": meta.info.model,
        "fingerprint": meta.info.fingerprint,
        "top_k": top_k,
        "score_from": score_from,
        "text": shown,
        "tokens": tokens,
        "next": after_last,
        "summary": summary,
    }


@router.post(
    "/support",
    response_model=SupportResponseModel,
    response_class=OrjsonResponse,
    summary="The teacher's view of every token of a text",
)
async def support(
    body: SupportRequest, state: StateDep, client: ClientDep, meta: MetaDep, _slot: SlotDep
) -> OrjsonResponse:
    """Per token: its string, id and character span, the teacher's log-prob, surprise
    (-log q), rank and top-K entropy, and the top-K alternatives; token 0 (and tokens up
    to `score_from`) have no prediction and say so (`predicted: false`)."""
    texts = [("text", body.text)] if body.text is not None else []
    _check_limits(meta, state.settings.max_text_chars, body.top_k, texts)
    result = await score_one(
        state,
        client,
        meta,
        text=body.text,
        token_ids=body.token_ids,
        top_k=body.top_k,
        score_from=body.score_from,
        surprise_threshold=body.surprise_threshold,
        student_logprobs=body.student_logprobs,
    )
    return OrjsonResponse(result)


@router.post(
    "/compare",
    response_model=CompareResponse,
    response_class=OrjsonResponse,
    summary="Two texts scored side by side",
)
async def compare(
    body: CompareRequest, state: StateDep, client: ClientDep, meta: MetaDep, _slot: SlotDep
) -> OrjsonResponse:
    """Each text as /v1/support answers it (its summary holds the mean surprise and the
    tokens above `surprise_threshold`), plus b's mean surprise minus a's."""
    _check_limits(
        meta,
        state.settings.max_text_chars,
        body.top_k,
        [(f"texts[{i}]", text) for i, text in enumerate(body.texts)],
    )
    results = await asyncio.gather(
        *(
            score_one(
                state,
                client,
                meta,
                text=text,
                token_ids=None,
                top_k=body.top_k,
                score_from=0,
                surprise_threshold=body.surprise_threshold,
            )
            for text in body.texts
        )
    )
    means = [r["summary"]["mean_surprise"] for r in results]
    difference = None if None in means else means[1] - means[0]
    return OrjsonResponse({"results": results, "mean_surprise_difference": difference})
