"""`GatewaySettings`: every knob of the HTTP gateway, validated once, defaults in one place.

Why this module exists: the gateway is built by `create_app(settings)`, and the same
settings come from three places in a fixed order of precedence — `opd-gateway` flags,
then `OPD_GATEWAY_*` environment variables (a container's way), then the defaults
below. A bad value fails at construction with a message naming the field, before any
port is bound. It knows nothing of FastAPI or gRPC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Settings of one gateway process; env var of field `x` is `OPD_GATEWAY_X`."""

    model_config = SettingsConfigDict(env_prefix="OPD_GATEWAY_", frozen=True, extra="forbid")

    teacher: str = Field(
        default="127.0.0.1:50051",
        description="The teacher's gRPC address(es): HOST:PORT[,HOST:PORT...] or dns:///NAME:PORT; "
        "several replicas are load-balanced by TeacherClient.",
    )
    host: str = Field(
        default="127.0.0.1", description="Address to bind; 0.0.0.0 inside a container."
    )
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port, 0..65535.")
    auth_token_file: Path | None = Field(
        default=None,
        description="File holding a bearer token. When set, /v1/* needs "
        "'Authorization: Bearer <token>' (401 otherwise) and the gateway sends the same "
        "token to the teacher; /, /healthz, /readyz, /metrics and /docs stay open.",
    )
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Largest request body in bytes, >= 1024; larger ones get 413 before they "
        "are buffered (on Content-Length, or while the body streams in).",
    )
    max_text_chars: int = Field(
        default=100_000,
        ge=1,
        description="Longest `text` in characters, >= 1 (the teacher's max_sequence_length "
        "limits tokens as well).",
    )
    max_concurrency_per_client: int = Field(
        default=8,
        ge=1,
        description="Requests to /v1/support and /v1/compare one client (its IP address) may "
        "have in flight, >= 1; one more gets 429 with Retry-After.",
    )
    timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Deadline of each teacher call in seconds, retries included.",
    )
    retry_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Attempts per teacher call on UNAVAILABLE/RESOURCE_EXHAUSTED, 1..10 "
        "(1 = no retry); the page wants a quick answer more than a patient one.",
    )
    ready_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How long /readyz waits for the teacher's health check, seconds.",
    )
    client_name: str = Field(
        default="opd-gateway",
        min_length=1,
        description="Name the gateway gives itself in the teacher's x-opd-client metadata "
        "(the teacher's fairness and metrics are per client).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the gateway and of uvicorn."
    )

    @field_validator("teacher")
    @classmethod
    def _targets_not_empty(cls, value: str) -> str:
        targets = [t.strip() for t in value.split(",") if t.strip()]
        if not targets:
            raise ValueError("teacher: give at least one HOST:PORT")
        return ",".join(targets)

    @model_validator(mode="after")
    def _token_file_readable(self) -> GatewaySettings:
        if self.auth_token_file is not None:
            if not self.auth_token_file.is_file():
                raise ValueError(f"auth_token_file: {self.auth_token_file} is not a file")
            if not self.auth_token_file.read_text().strip():
                raise ValueError(f"auth_token_file: {self.auth_token_file} is empty")
        return self

    @property
    def teacher_targets(self) -> list[str]:
        return self.teacher.split(",")

    def auth_token(self) -> str | None:
        """The bearer token, read from `auth_token_file` (None when auth is off)."""
        if self.auth_token_file is None:
            return None
        return self.auth_token_file.read_text().strip()
