"""`opd-gateway`: serve the HTTP gateway (JSON API and web page) in front of a teacher.

    opd-gateway --teacher 127.0.0.1:50051 --host 127.0.0.1 --port 8000
    OPD_GATEWAY_TEACHER=teacher-0:50051,teacher-1:50051 opd-gateway --host 0.0.0.0

Flags override `OPD_GATEWAY_*` environment variables, which override the defaults of
`GatewaySettings` (the one place defaults live: unset flags are not passed on). The
teacher may be down at start: the gateway starts anyway, /readyz says 503 until the
teacher is SERVING. A bad setting prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from opd_gateway.settings import GatewaySettings

_FIELDS = GatewaySettings.model_fields


def _help(name: str) -> str:
    return str(_FIELDS[name].description) + f" (default: {_FIELDS[name].default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opd-gateway",
        description="opd's HTTP gateway: the teacher's per-token view of any text over "
        "JSON (/v1/support, /v1/compare, /v1/info, OpenAPI at /docs) and a web page at /.",
    )
    add = parser.add_argument
    add("--teacher", help=_help("teacher"))
    add("--host", help=_help("host"))
    add("--port", type=int, help=_help("port"))
    add("--auth-token-file", type=Path, help=_help("auth_token_file"))
    add("--max-body-bytes", type=int, help=_help("max_body_bytes"))
    add("--max-text-chars", type=int, help=_help("max_text_chars"))
    add("--max-concurrency-per-client", type=int, help=_help("max_concurrency_per_client"))
    add("--timeout-s", type=float, help=_help("timeout_s"))
    add("--retry-attempts", type=int, help=_help("retry_attempts"))
    add("--log-level", choices=["debug", "info", "warning", "error"], help=_help("log_level"))
    return parser


def _settings(args: argparse.Namespace) -> GatewaySettings:
    given = {name: value for name, value in vars(args).items() if value is not None}
    return GatewaySettings(**given)


def _one_line(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: "
        f"{str(e['msg']).removeprefix('Value error, ')}"
        for e in error.errors()
    )


def _exit_after_drain(signum: int, frame: object) -> None:
    logging.getLogger("opd_gateway").info("stopped after %s", signal.Signals(signum).name)
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as error:
        print(f"opd-gateway: error: {_one_line(error)}", file=sys.stderr)
        return 2
    import uvicorn

    from opd_gateway.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal at the handler that was
    # there before it; this one turns that into exit code 0, as the teacher does.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_after_drain)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The gateway is one event loop; keep-alive helps the page and benchmarks.
        timeout_keep_alive=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
