"""Checks a `ScoreRequest` against the served model's limits and turns it into a job.

Every rule names the field and the limit it broke (`ValidationError`), so a client
sees `INVALID_ARGUMENT: top_k: 300 exceeds max_top_k 256` rather than a stack trace,
and the service goes on serving. Text inputs are tokenized here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opd.teacher.v1 import teacher_pb2
from opd_teacher.errors import UnimplementedError, ValidationError
from opd_teacher.tokenizer import EncodedText, TeacherTokenizer
from opd_teacher.types import EngineInfo, ScoreJob

_KNOWN_DTYPES = frozenset(teacher_pb2.LogprobDtype.values())


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_sequence_length: int
    max_top_k: int
    supports_extra_ids: bool

    @classmethod
    def of(cls, info: EngineInfo, max_top_k: int) -> Limits:
        return cls(
            vocab_size=info.vocab_size,
            max_sequence_length=info.max_sequence_length,
            max_top_k=min(max_top_k, info.vocab_size),
            supports_extra_ids=info.supports_extra_ids,
        )


def validate_request(
    request: teacher_pb2.ScoreRequest,
    limits: Limits,
    tokenizer: TeacherTokenizer,
    client: str,
    deadline: float | None,
) -> tuple[ScoreJob, EncodedText | None]:
    """Returns the job and, for text input, its tokenization (sent back to the client)."""
    encoded: EncodedText | None = None
    which = request.WhichOneof("input")
    if which is None:
        raise ValidationError("input", "set either token_ids or text")
    if which == "text":
        if not request.text:
            raise ValidationError("text", "must not be empty")
        encoded = tokenizer.encode(request.text)
        token_ids_N = encoded.token_ids_N
        if token_ids_N.size == 0:
            raise ValidationError("text", "tokenizes to no tokens")
    else:
        token_ids_N = np.asarray(request.token_ids.ids, dtype=np.int32)
        if token_ids_N.size == 0:
            raise ValidationError("token_ids", "must hold at least one id")
    num_tokens = int(token_ids_N.size)
    if num_tokens > limits.max_sequence_length:
        raise ValidationError(
            which, f"{num_tokens} tokens exceed max_sequence_length {limits.max_sequence_length}"
        )
    out_of_range = np.flatnonzero((token_ids_N < 0) | (token_ids_N >= limits.vocab_size))
    if out_of_range.size:
        i = int(out_of_range[0])
        raise ValidationError(
            "token_ids",
            f"token_ids[{i}] = {int(token_ids_N[i])} is outside "
            f"[0, vocab_size {limits.vocab_size})",
        )
    if not 1 <= request.top_k <= limits.max_top_k:
        raise ValidationError("top_k", f"{request.top_k} is not in 1..max_top_k {limits.max_top_k}")
    if request.score_from >= num_tokens:
        raise ValidationError(
            "score_from", f"{request.score_from} is past the last row {num_tokens - 1}"
        )
    if request.logprobs_dtype not in _KNOWN_DTYPES:
        raise ValidationError(
            "logprobs_dtype", f"unknown value {request.logprobs_dtype} (FLOAT32=1, FLOAT16=2)"
        )
    extra_ids_NE = _extra_ids(request, num_tokens, limits)
    job = ScoreJob(
        job_id=request.request_id,
        client=client,
        token_ids_N=token_ids_N,
        top_k=int(request.top_k),
        score_from=int(request.score_from),
        return_token_logprobs=request.return_token_logprobs,
        extra_ids_NE=extra_ids_NE,
        deadline=deadline,
    )
    return job, encoded


def _extra_ids(
    request: teacher_pb2.ScoreRequest, num_tokens: int, limits: Limits
) -> np.ndarray | None:
    per_position = int(request.extra_per_position)
    count = len(request.extra_ids)
    if count == 0 and per_position == 0:
        return None
    if not limits.supports_extra_ids:
        raise UnimplementedError("extra_ids: this backend does not score extra ids")
    if per_position == 0 or per_position > limits.max_top_k:
        raise ValidationError(
            "extra_per_position", f"{per_position} is not in 1..max_top_k {limits.max_top_k}"
        )
    if count != num_tokens * per_position:
        raise ValidationError(
            "extra_ids",
            f"holds {count} ids, expected N*E = {num_tokens}*{per_position} = "
            f"{num_tokens * per_position}",
        )
    extra_NE = np.asarray(request.extra_ids, dtype=np.int32).reshape(num_tokens, per_position)
    if extra_NE.min() < 0 or extra_NE.max() >= limits.vocab_size:
        raise ValidationError("extra_ids", f"ids must be in [0, vocab_size {limits.vocab_size})")
    return extra_NE
