"""Validated configuration of the teacher service, one dataclass per component.

Each field's default lives here and only here; the CLI builds these from its flags, and
a bad value fails at construction with a message naming the field and its range, before
any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value out of range; the message names the field."""


def _require(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {problem}")


def _code_targets(auto_map: object) -> list[str]:
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return sorted({str(v) for v in flat if v})


def _require_no_remote_code(model_dir: Path, trusted: bool) -> None:
    """Loading a directory whose config maps classes to Python files in it (`auto_map`)
    would run those files; refused unless the operator said the directory is trusted."""
    if trusted:
        return
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(model_dir) / name
        try:
            auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue  # missing or unreadable: the loader reports it
        if auto_map:
            raise ConfigError(
                f"model_dir: {path} maps classes to code in the model directory (auto_map: "
                f"{', '.join(_code_targets(auto_map))[:200]}); opd-teacher runs no code from "
                "a model directory: pass --trust-remote-code only for one you trust"
            )


@dataclass(frozen=True)
class BatcherConfig:
    """How the service groups jobs into engine batches.

    CPU defaults come from benchmarks/teacher.py: on 2 cores a padded batch of long
    sequences runs slower than the same sequences one at a time (64 clients on a 58M
    Llama: 1.9x the bare model's time with a 4096-token budget, 1.2x without batching),
    while short sequences still gain from sharing a batch; so the budget is small and
    the wait window short. On a GPU raise `max_batch_tokens` (e.g. 16384).
    """

    max_batch_tokens: int = 512
    """Padded tokens (sequences x longest) per batch, >= 1; one longer job runs alone."""
    max_batch_sequences: int = 64
    """Sequences per batch, >= 1."""
    max_wait_ms: float = 1.0
    """How long a batch waits for more jobs after its first arrives, 0..1000 ms."""
    max_queue: int = 4096
    """Jobs waiting (not yet running) across all clients, >= 1; more get RESOURCE_EXHAUSTED."""
    max_padding_fraction: float = 1.0
    """Length bucketing: a job joins a batch only while padding stays at most this share of
    the batch's tokens, 0..1 (1 = pad freely, 0 = equal lengths only)."""
    max_inflight_tokens: int = 65536
    """Engines with their own continuous batching (vllm): tokens of the jobs handed to the
    engine and not yet answered, >= 1 (one longer job still runs, alone); the jobs in
    flight are also capped by `max_batch_sequences`. The rest wait in the fair queue."""

    def __post_init__(self) -> None:
        _require(self.max_batch_tokens >= 1, "max_batch_tokens", "must be >= 1")
        _require(self.max_batch_sequences >= 1, "max_batch_sequences", "must be >= 1")
        _require(0 <= self.max_wait_ms <= 1000, "max_wait_ms", "must be in 0..1000")
        _require(self.max_queue >= 1, "max_queue", "must be >= 1")
        _require(0 <= self.max_padding_fraction <= 1, "max_padding_fraction", "must be in 0..1")
        _require(self.max_inflight_tokens >= 1, "max_inflight_tokens", "must be >= 1")


@dataclass(frozen=True)
class HFEngineConfig:
    """The transformers backend: any causal LM directory, no remote code."""

    model_dir: Path
    """A `save_pretrained` directory with config, weights and tokenizer files."""
    device: str = "cpu"
    """'cpu' or 'cuda' (or 'cuda:N')."""
    dtype: str = "auto"
    """'auto' (float32 on CPU, bfloat16 on GPU), 'float32', 'bfloat16' or 'float16'."""
    trust_remote_code: bool = False
    """Load a directory whose `auto_map` points at Python files in it (runs that code)."""

    def __post_init__(self) -> None:
        _require(Path(self.model_dir).is_dir(), "model_dir", f"{self.model_dir} is not a directory")
        _require_no_remote_code(Path(self.model_dir), self.trust_remote_code)
        _require(
            self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            f"{self.device!r} is not 'cpu' or 'cuda[:N]'",
        )
        _require(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "dtype",
            f"{self.dtype!r} is not auto, float32, bfloat16 or float16",
        )


@dataclass(frozen=True)
class VLLMEngineConfig:
    """The vLLM backend: vLLM's async engine in-process, its own continuous batching.

    Each field is passed through to vLLM's engine arguments; `max_logprobs` is the service's
    `max_top_k`, so it is not repeated here. On CPU use dtype 'float32' and enforce_eager.
    """

    model_dir: Path
    """A `save_pretrained` directory with config, weights and tokenizer files."""
    dtype: str = "auto"
    """'auto' (vLLM picks from the model config), 'float32', 'bfloat16' or 'float16'."""
    tensor_parallel_size: int = 1
    """GPUs one model is split over, >= 1."""
    gpu_memory_utilization: float = 0.9
    """Share of each GPU's memory vLLM may take for weights and KV cache, in (0, 1]."""
    max_model_len: int | None = None
    """Longest sequence in tokens, >= 2; None = the model config's limit."""
    enable_prefix_caching: bool = False
    """vLLM's prefix cache (README: scoring requests do not read it in vLLM 0.32)."""
    enforce_eager: bool = False
    """No CUDA graphs or compilation: faster start, slower steps; needed on CPU."""
    trust_remote_code: bool = False
    """Load a directory whose `auto_map` points at Python files in it (runs that code)."""

    def __post_init__(self) -> None:
        _require(Path(self.model_dir).is_dir(), "model_dir", f"{self.model_dir} is not a directory")
        _require_no_remote_code(Path(self.model_dir), self.trust_remote_code)
        _require(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "dtype",
            f"{self.dtype!r} is not auto, float32, bfloat16 or float16",
        )
        _require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        _require(
            0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]"
        )
        _require(
            self.max_model_len is None or self.max_model_len >= 2,
            "max_model_len",
            "must be >= 2",
        )


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC transport and the process lifecycle."""

    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 inside a container."""
    port: int = 50051
    """gRPC port, 0..65535 (0 picks a free one)."""
    max_top_k: int = 256
    """Largest top_k a request may ask for, >= 1."""
    max_stream_inflight: int = 256
    """Requests of one ScoreStream in flight before the server stops reading it
    (HTTP/2 flow control then pushes back on the client), >= 1."""
    metrics_port: int | None = None
    """Port of the Prometheus /metrics endpoint; None disables it."""
    auth_token_file: Path | None = None
    """File holding the bearer token every call but health and reflection must carry."""
    drain_timeout_s: float = 30.0
    """On SIGTERM, how long in-flight work may take before the server stops, >= 0."""
    max_message_bytes: int = 256 << 20
    """gRPC send and receive message cap on both sides, >= 4 MiB."""
    batcher: BatcherConfig = field(default_factory=BatcherConfig)

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "port", "must be in 0..65535")
        _require(self.max_top_k >= 1, "max_top_k", "must be >= 1")
        _require(self.max_stream_inflight >= 1, "max_stream_inflight", "must be >= 1")
        _require(
            self.metrics_port is None or 0 <= self.metrics_port <= 65535,
            "metrics_port",
            "must be in 0..65535",
        )
        _require(
            self.auth_token_file is None or Path(self.auth_token_file).is_file(),
            "auth_token_file",
            f"{self.auth_token_file} is not a file",
        )
        _require(self.drain_timeout_s >= 0, "drain_timeout_s", "must be >= 0")
        _require(self.max_message_bytes >= 4 << 20, "max_message_bytes", "must be >= 4 MiB")

    def auth_token(self) -> str | None:
        if self.auth_token_file is None:
            return None
        token = Path(self.auth_token_file).read_text().strip()
        _require(bool(token), "auth_token_file", f"{self.auth_token_file} is empty")
        return token
