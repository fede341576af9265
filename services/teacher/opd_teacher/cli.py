"""`opd-teacher`: serve a teacher model over gRPC, or ask a running teacher about a text.

    opd-teacher serve --model DIR --backend hf --host 127.0.0.1 --port 50051
    opd-teacher serve --model DIR --backend vllm --dtype float32 --enforce-eager   # vLLM on CPU
    opd-teacher score --teacher 127.0.0.1:50051 --text "12+7=19" --top-k 5
    opd-teacher tiny-model          # builds (once) and prints the tiny test model's directory

The CLI only parses flags into the validated configs of `config.py`; the work is in
`server.py` and the engines. Errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from opd_teacher.config import (
    BatcherConfig,
    ConfigError,
    HFEngineConfig,
    ServerConfig,
    VLLMEngineConfig,
)

if TYPE_CHECKING:
    from opd_teacher.engine.base import ScoringEngine

_DEFAULTS = ServerConfig()
_BATCH = BatcherConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opd-teacher",
        description="opd's teacher scoring service: one teacher model behind gRPC, "
        "shared by many student training jobs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve a model over gRPC",
        description="Load a causal LM and serve its top-K log-probabilities over gRPC "
        "(health: grpc.health.v1; reflection on).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model", type=Path, required=True, help="save_pretrained model directory")
    serve.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        default="hf",
        help="scoring engine: hf (transformers) or vllm (its own venv: make install-vllm)",
    )
    serve.add_argument("--host", default=_DEFAULTS.host, help="address to bind")
    serve.add_argument("--port", type=int, default=_DEFAULTS.port, help="gRPC port (0: any free)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    serve.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="model dtype; auto = float32 on CPU, bfloat16 on GPU (vllm: from the model config)",
    )
    serve.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load a model directory whose auto_map points at Python files in it, running "
        "that code (off: such a directory is refused)",
    )
    _add_vllm_flags(serve)
    serve.add_argument("--max-top-k", type=int, default=_DEFAULTS.max_top_k, help="largest top_k")
    serve.add_argument(
        "--max-batch-tokens",
        type=int,
        default=_BATCH.max_batch_tokens,
        help="padded tokens per engine batch",
    )
    serve.add_argument(
        "--max-batch-sequences",
        type=int,
        default=_BATCH.max_batch_sequences,
        help="sequences per engine batch",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=_BATCH.max_wait_ms,
        help="how long a batch waits for more jobs",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=_BATCH.max_queue,
        help="queued jobs before RESOURCE_EXHAUSTED",
    )
    serve.add_argument(
        "--max-padding-fraction",
        type=float,
        default=_BATCH.max_padding_fraction,
        help="length bucketing: most padding a batch may hold, 0..1 (1 = pad freely)",
    )
    serve.add_argument(
        "--max-inflight-tokens",
        type=int,
        default=_BATCH.max_inflight_tokens,
        help="vllm: tokens handed to the engine and not yet answered",
    )
    serve.add_argument(
        "--max-stream-inflight",
        type=int,
        default=_DEFAULTS.max_stream_inflight,
        help="requests in flight per ScoreStream before back-pressure",
    )
    serve.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (off if unset)"
    )
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="file with a bearer token required on all calls but health/reflection",
    )
    serve.add_argument(
        "--drain-timeout-s",
        type=float,
        default=_DEFAULTS.drain_timeout_s,
        help="on SIGTERM, how long in-flight work may take",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"])

    score = commands.add_parser(
        "score",
        help="print a running teacher's view of a text or of token ids",
        description="Ask a running teacher for its top-K next-token log-probabilities at "
        "every position of a text (tokenized by the teacher) or of token ids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    score.add_argument("--teacher", required=True, help="HOST:PORT[,HOST:PORT...]")
    given = score.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="text to score")
    given.add_argument("--ids", type=int, nargs="+", help="teacher token ids to score")
    score.add_argument("--top-k", type=int, default=5, help="top tokens per position")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.add_argument("--auth-token-file", type=Path, default=None, help="bearer token file")
    score.add_argument("--timeout-s", type=float, default=30.0, help="deadline per call")

    commands.add_parser(
        "tiny-model",
        help="build (once) the tiny test model and print its directory",
        description="Build the tiny tokenizer and Llama teacher used by tests and the demo, "
        "cached under OPD_CACHE_DIR (default ./.cache/opd), and print the directory.",
    )
    return parser


def _add_vllm_flags(serve: argparse.ArgumentParser) -> None:
    vllm = serve.add_argument_group("vllm backend", "passed through to vLLM's engine arguments")
    defaults = VLLMEngineConfig.__dataclass_fields__
    vllm.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=defaults["tensor_parallel_size"].default,
        help="GPUs one model is split over",
    )
    vllm.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=defaults["gpu_memory_utilization"].default,
        help="share of GPU memory for weights and KV cache",
    )
    vllm.add_argument(
        "--max-model-len", type=int, default=None, help="longest sequence (default: the model's)"
    )
    vllm.add_argument(
        "--enable-prefix-caching",
        action="store_true",
        help="vLLM's prefix cache (scoring requests do not read it in vLLM 0.32: README)",
    )
    vllm.add_argument(
        "--enforce-eager", action="store_true", help="no CUDA graphs or compilation (CPU: needed)"
    )


def _engine(args: argparse.Namespace, max_top_k: int) -> ScoringEngine:
    if args.backend == "vllm":
        from opd_teacher.engine.vllm import VLLMEngine

        vllm_config = VLLMEngineConfig(
            model_dir=args.model,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            enable_prefix_caching=args.enable_prefix_caching,
            enforce_eager=args.enforce_eager,
            trust_remote_code=args.trust_remote_code,
        )
        return VLLMEngine(vllm_config, max_top_k=max_top_k)
    from opd_teacher.engine.hf import HFEngine

    return HFEngine(
        HFEngineConfig(
            model_dir=args.model,
            device=args.device,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
        )
    )


def server_config(args: argparse.Namespace, with_auth: bool = True) -> ServerConfig:
    """The validated `ServerConfig` of `opd-teacher serve`'s arguments. `with_auth=False`
    leaves the token file out (a deployment check, where it is mounted only at run time)."""
    return ServerConfig(
        host=args.host,
        port=args.port,
        max_top_k=args.max_top_k,
        max_stream_inflight=args.max_stream_inflight,
        metrics_port=args.metrics_port,
        auth_token_file=args.auth_token_file if with_auth else None,
        drain_timeout_s=args.drain_timeout_s,
        batcher=BatcherConfig(
            max_batch_tokens=args.max_batch_tokens,
            max_batch_sequences=args.max_batch_sequences,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_padding_fraction=args.max_padding_fraction,
            max_inflight_tokens=args.max_inflight_tokens,
        ),
    )


def _serve(args: argparse.Namespace) -> int:
    from opd_teacher.log import configure_logging
    from opd_teacher.server import run_server

    config = server_config(args)
    engine = _engine(args, config.max_top_k)
    configure_logging(args.log_level, args.log_format)
    return asyncio.run(run_server(engine, config))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "score":
            from opd_teacher.score_cli import run_score

            return run_score(args)
        from opd_teacher.tiny import ensure_tiny_teacher

        print(ensure_tiny_teacher())
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"opd-teacher {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
