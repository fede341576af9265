"""The gateway's HTTP contract: documented pydantic models for every body in and out.

Why this module exists: these models are the OpenAPI schema at /docs, and the request
models validate input before anything reaches the teacher (422 naming the field).
Responses are built as plain dicts by `support.py` and encoded once (the hot path);
the response models here document them, and the tests check that what is sent
validates against them. Units: log-probs and surprise in nats (natural log).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOP_K = 4096
"""Static upper bound on top_k; the teacher's max_top_k (GET /v1/info) is the real limit."""
INT32_MAX = 2**31 - 1
DEFAULT_SURPRISE_THRESHOLD = 5.0

StudentLogprob = Annotated[float, Field(le=0.0, allow_inf_nan=False)]


def _utf8(value: str, field: str) -> str:
    # JSON may carry lone surrogates ("\ud800"), which no UTF-8 text can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{field} is not valid Unicode text ({error.reason})") from error
    return value


class SupportRequest(BaseModel):
    """Score one text (or teacher token ids) and return the teacher's view of each token."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "12+7=19. the teacher adds", "top_k": 5}]},
    )

    text: str | None = Field(
        None,
        min_length=1,
        description="Text to score, tokenized by the teacher (no special tokens, no chat "
        "template). Give exactly one of `text` and `token_ids`.",
    )
    token_ids: list[Annotated[int, Field(ge=0, le=INT32_MAX)]] | None = Field(
        None,
        min_length=1,
        description="Teacher token ids, scored exactly as given (no BOS added).",
    )
    top_k: int = Field(
        10,
        ge=1,
        le=MAX_TOP_K,
        description="Teacher alternatives per position, 1..max_top_k of GET /v1/info.",
    )
    score_from: int = Field(
        0,
        ge=0,
        le=INT32_MAX,
        description="First teacher row: tokens 0..score_from come back unscored (a prompt).",
    )
    student_logprobs: list[StudentLogprob | None] | None = Field(
        None,
        description="Optional, one per token: the student's log-prob of that token (null "
        "for unscored tokens). Adds `log_ratio` = student_logprob - teacher logprob per "
        "token, so a pasted student rollout shows where the teacher disagrees.",
    )
    surprise_threshold: float = Field(
        DEFAULT_SURPRISE_THRESHOLD,
        ge=0,
        allow_inf_nan=False,
        description="Surprise (nats) above which the summary counts a token.",
    )

    @field_validator("text")
    @classmethod
    def _text_utf8(cls, value: str | None) -> str | None:
        return None if value is None else _utf8(value, "text")

    @model_validator(mode="after")
    def _one_input(self) -> SupportRequest:
        if (self.text is None) == (self.token_ids is None):
            raise ValueError("text, token_ids: give exactly one of `text` and `token_ids`")
        return self


class CompareRequest(BaseModel):
    """Score two texts with the same K and compare the teacher's surprise on each."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["3+4=7.", "3+4=8."], "top_k": 5}]},
    )

    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        ..., min_length=2, max_length=2, description="Exactly two texts, [a, b]."
    )
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="As in /v1/support.")
    surprise_threshold: float = Field(
        DEFAULT_SURPRISE_THRESHOLD, ge=0, allow_inf_nan=False, description="As in /v1/support."
    )

    @field_validator("texts")
    @classmethod
    def _texts_utf8(cls, value: list[str]) -> list[str]:
        return [_utf8(text, f"texts[{i}]") for i, text in enumerate(value)]


class TopK(BaseModel):
    """The teacher's top-K candidates at one position, most likely first, as three
    parallel lists (K each; empty for an unscored token)."""

    ids: list[int] = Field(description="Teacher token ids.")
    tokens: list[str] = Field(
        description="Each id decoded alone ('\ufffd' where a token holds part of a character)."
    )
    logprobs: list[float] = Field(
        description="Teacher log-probs (full-vocabulary softmax), sorted descending."
    )


class TokenRow(BaseModel):
    """One input token and the teacher's prediction of it from the tokens before it."""

    index: int = Field(description="Position in the sequence, 0..N-1.")
    id: int = Field(description="Teacher token id.")
    token: str = Field(description="The token decoded alone.")
    start: int = Field(description="Start of its [start, end) character span in `text`.")
    end: int = Field(
        description="End of its character span (spans of tokens that share a "
        "character overlap or are empty)."
    )
    predicted: bool = Field(
        description="False for token 0 (nothing precedes it) and for tokens <= score_from; "
        "their teacher fields are null."
    )
    logprob: float | None = Field(description="Teacher log q of this token given the prefix.")
    surprise: float | None = Field(description="-logprob, nats.")
    rank: int | None = Field(description="Rank of this token in the teacher's row, 1 = top.")
    entropy: float | None = Field(
        description="Entropy (nats) of the teacher's top-K renormalised to sum to 1."
    )
    top: TopK = Field(description="The teacher's top-K for this position.")
    student_logprob: float | None = Field(
        None, description="The student's log-prob given in the request (if any)."
    )
    log_ratio: float | None = Field(
        None, description="student_logprob - logprob: > 0 where the student is more sure."
    )


class WorstToken(BaseModel):
    index: int
    token: str
    surprise: float
    rank: int


class Summary(BaseModel):
    """Sequence-level view of the teacher's surprise."""

    num_tokens: int = Field(description="N, tokens in the sequence.")
    num_predicted: int = Field(description="Tokens with a teacher prediction.")
    mean_surprise: float | None = Field(description="Mean -log q over predicted tokens, nats.")
    max_surprise: float | None = Field(description="Largest surprise, nats.")
    perplexity: float | None = Field(description="exp(mean_surprise).")
    surprise_threshold: float = Field(description="The request's threshold, nats.")
    above_threshold: int = Field(description="Predicted tokens with surprise > threshold.")
    worst: list[WorstToken] = Field(description="Up to 5 most surprising tokens, worst first.")
    mean_log_ratio: float | None = Field(
        None, description="Mean log_ratio over tokens with a student log-prob."
    )


class SupportResponse(BaseModel):
    """The teacher's view of every token of one sequence."""

    model: str = Field(description="TeacherInfo.model.")
    fingerprint: str = Field(description="TeacherInfo.fingerprint: equal means same teacher.")
    top_k: int
    score_from: int
    text: str = Field(description="The text (for token_ids input: their decoding).")
    tokens: list[TokenRow]
    next: TopK = Field(description="The teacher's top-K after the last token.")
    summary: Summary


class CompareResponse(BaseModel):
    """Two texts scored side by side."""

    results: list[SupportResponse] = Field(description="[a, b], as /v1/support answers each.")
    mean_surprise_difference: float | None = Field(
        description="b's mean surprise minus a's, nats (> 0: the teacher finds b less likely)."
    )


class SpecialTokenOut(BaseModel):
    role: str
    id: int
    text: str


class InfoResponse(BaseModel):
    """The teacher's GetInfo, plus the gateway's own limits."""

    model: str
    fingerprint: str
    backend: str
    backend_version: str
    vocab_size: int
    tokenizer_size: int
    max_top_k: int
    max_sequence_length: int
    supports_extra_ids: bool
    special_tokens: list[SpecialTokenOut]
    tokenizer_sha256: str
    contract_version: str
    gateway_max_text_chars: int = Field(description="Longest `text` the gateway accepts.")
    gateway_max_body_bytes: int = Field(description="Largest request body the gateway accepts.")
    gateway_auth: bool = Field(description="Whether /v1/* needs a bearer token.")


class ErrorResponse(BaseModel):
    """Every non-200 answer of the gateway."""

    detail: str = Field(description="What went wrong, readable; names the field for 422.")
    code: str = Field(description="gRPC-style code: INVALID_ARGUMENT, UNAVAILABLE, ...")
    field: str | None = Field(None, description="The request field at fault, when one is.")


class Health(BaseModel):
    status: str = Field(description="'ok', 'ready' or 'not ready'.")
    detail: str | None = None
