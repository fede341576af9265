"""The HTTP gateway's cost over a direct gRPC `Score` call, measured in one run.

    .venv/bin/python benchmarks/gateway.py [--quick] [--json-out FILE]

Against one `opd-teacher serve` process on the tiny model, for texts of about 32, 128,
256 and 1024 tokens (K = 5, 10, 10, 32), at 1, 8 and 32 concurrent clients, it sends
the same requests two ways: `TeacherClient.score(text=..., return_token_logprobs=True)`
(direct gRPC) and POST /v1/support to an `opd-gateway` process (HTTP/JSON, which adds
the per-token rows and their top-K strings). It prints requests/s, p50/p99 latency, the
gateway's overhead in ms and as a ratio of p50s (target: <= 1.3 for the sizes people
debug with, <= 256 tokens and K <= 10, at one client), and, measured in this process,
what building and JSON-encoding one answer costs (orjson, as served, next to the
standard library's json) — the gateway's main cost per request.
Every run is bounded in requests; nothing here needs a GPU or a network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import print_json, print_table
from processes import free_port, start_gateway, start_teacher, stop

from opd_client import TeacherClient
from opd_gateway.encoding import dumps
from opd_gateway.support import build_support
from opd_teacher.tiny import ensure_tiny_teacher, synthetic_corpus

SIZES = ((32, 5), (128, 10), (256, 10), (1024, 32))
CLIENTS = (1, 8, 32)
TARGET_RATIO = 1.3


@dataclass
class Run:
    path: str
    tokens: int
    top_k: int
    clients: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def make_text(tokenizer: Tokenizer, num_tokens: int) -> str:
    """A text of the tiny model's kind that the teacher splits into ~num_tokens tokens."""
    text = " ".join(synthetic_corpus(4 * num_tokens, seed=num_tokens))
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:num_tokens]
    return tokenizer.decode(ids)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


async def drive_pair(
    sends: dict[str, Any], tokens: int, top_k: int, clients: int, requests: int
) -> list[Run]:
    """`requests` calls of each path at `clients` concurrency, the two paths interleaved
    (each worker alternates them, in alternating order), so that both see the same load
    on a shared machine; throughput is each path's share of the common wall time."""
    latencies: dict[str, list[float]] = {name: [] for name in sends}
    names = list(sends)
    counter = iter(range(requests))

    async def worker(offset: int) -> None:
        for i in counter:
            order = names if (i + offset) % 2 == 0 else names[::-1]
            for name in order:
                start = time.perf_counter()
                await sends[name]()
                latencies[name].append(time.perf_counter() - start)

    for send in sends.values():  # warm the connections and the caches
        for _ in range(3):
            await send()
    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    wall = time.perf_counter() - start
    busy = {name: sum(values) for name, values in latencies.items()}
    total_busy = sum(busy.values())
    return [
        Run(
            path=name,
            tokens=tokens,
            top_k=top_k,
            clients=clients,
            requests=len(values),
            # Requests/s if this path had had the wall time alone, pro rata of busy time.
            requests_per_s=len(values) / (wall * busy[name] / total_busy),
            p50_ms=_percentile(values, 50),
            p99_ms=_percentile(values, 99),
        )
        for name, values in latencies.items()
    ]


async def measure(teacher: str, gateway: str, texts: dict[int, str], quick: bool) -> list[Run]:
    runs: list[Run] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        TeacherClient(teacher, timeout_s=60, client_name="bench") as direct,
        httpx.AsyncClient(base_url=gateway, limits=limits, timeout=60) as http,
    ):
        for tokens, top_k in SIZES:
            text = texts[tokens]
            body = {"text": text, "top_k": top_k}

            async def via_grpc(text: str = text, top_k: int = top_k) -> None:
                await direct.score(text=text, top_k=top_k, return_token_logprobs=True)

            async def via_http(body: dict[str, Any] = body) -> None:
                response = await http.post("/v1/support", json=body)
                response.raise_for_status()
                _ = response.content

            for clients in CLIENTS:
                per_client = 2 if quick else 4
                floor = (30 if tokens <= 256 else 8) // (2 if quick else 1)
                requests = max(clients * per_client, floor)
                sends = {"grpc": via_grpc, "gateway": via_http}
                runs.extend(await drive_pair(sends, tokens, top_k, clients, requests))
    return runs


def _plain(value: Any) -> Any:
    """What the standard library's json needs for numpy values orjson writes natively."""
    return value.tolist() if isinstance(value, np.ndarray) else float(value)


async def encoding_cost(teacher: str, texts: dict[int, str], repeats: int) -> list[dict[str, Any]]:
    """Milliseconds to build one /v1/support answer and to encode it, in this process."""
    rows = []
    async with TeacherClient(teacher, timeout_s=60) as client:
        files = await client.get_tokenizer()
        tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
        pieces = tokenizer.decode_batch([[i] for i in range(tokenizer.get_vocab_size())])
        for tokens, top_k in SIZES:
            out = await client.score(text=texts[tokens], top_k=top_k, return_token_logprobs=True)
            assert out.token_ids_N is not None and out.offsets_N2 is not None
            build, fast, slow = [], [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                rows_, after, summary = build_support(
                    pieces=pieces,
                    out=out,
                    token_ids_N=out.token_ids_N,
                    starts_N=out.offsets_N2[:, 0],
                    ends_N=out.offsets_N2[:, 1],
                    score_from=0,
                    surprise_threshold=5.0,
                )
                answer = {"tokens": rows_, "next": after, "summary": summary}
                t1 = time.perf_counter()
                encoded = dumps(answer)
                t2 = time.perf_counter()
                json.dumps(answer, default=_plain)
                t3 = time.perf_counter()
                build.append(t1 - t0)
                fast.append(t2 - t1)
                slow.append(t3 - t2)
            rows.append(
                {
                    "tokens": int(out.token_ids_N.shape[0]),
                    "top_k": top_k,
                    "build_ms": statistics.median(build) * 1000,
                    "orjson_ms": statistics.median(fast) * 1000,
                    "stdlib_json_ms": statistics.median(slow) * 1000,
                    "answer_bytes": len(encoded),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()

    model_dir = ensure_tiny_teacher()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    texts = {tokens: make_text(tokenizer, tokens) for tokens, _ in SIZES}
    teacher_port, gateway_port = free_port(), free_port()
    teacher = start_teacher(model_dir, teacher_port)
    try:
        gateway = start_gateway(
            gateway_port,
            "--teacher",
            f"127.0.0.1:{teacher_port}",
            "--max-concurrency-per-client",
            "256",  # every benchmark client comes from 127.0.0.1
        )
        try:
            address = f"127.0.0.1:{teacher_port}"
            runs = asyncio.run(
                measure(address, f"http://127.0.0.1:{gateway_port}", texts, args.quick)
            )
            encoding = asyncio.run(encoding_cost(address, texts, 5 if args.quick else 20))
        finally:
            stop(gateway)
    finally:
        stop(teacher)

    by_key = {(r.path, r.tokens, r.clients): r for r in runs}
    comparison = []
    for tokens, top_k in SIZES:
        for clients in CLIENTS:
            grpc_run, http_run = (
                by_key[("grpc", tokens, clients)],
                by_key[("gateway", tokens, clients)],
            )
            comparison.append(
                {
                    "tokens": tokens,
                    "top_k": top_k,
                    "clients": clients,
                    "grpc_rps": grpc_run.requests_per_s,
                    "gateway_rps": http_run.requests_per_s,
                    "grpc_p50_ms": grpc_run.p50_ms,
                    "gateway_p50_ms": http_run.p50_ms,
                    "grpc_p99_ms": grpc_run.p99_ms,
                    "gateway_p99_ms": http_run.p99_ms,
                    "overhead_p50_ms": http_run.p50_ms - grpc_run.p50_ms,
                    "ratio_p50": http_run.p50_ms / grpc_run.p50_ms,
                }
            )
    headline = [
        c for c in comparison if c["tokens"] <= 256 and c["top_k"] <= 10 and c["clients"] == 1
    ]
    target_met = all(c["ratio_p50"] <= TARGET_RATIO for c in headline)

    print_table(
        [
            "tokens",
            "K",
            "clients",
            "grpc req/s",
            "gw req/s",
            "grpc p50",
            "gw p50",
            "grpc p99",
            "gw p99",
            "overhead ms",
            "ratio p50",
        ],
        [
            [
                c["tokens"],
                c["top_k"],
                c["clients"],
                f"{c['grpc_rps']:.0f}",
                f"{c['gateway_rps']:.0f}",
                f"{c['grpc_p50_ms']:.2f}",
                f"{c['gateway_p50_ms']:.2f}",
                f"{c['grpc_p99_ms']:.2f}",
                f"{c['gateway_p99_ms']:.2f}",
                f"{c['overhead_p50_ms']:+.2f}",
                f"{c['ratio_p50']:.2f}",
            ]
            for c in comparison
        ],
    )
    print()
    print_table(
        ["tokens", "K", "build ms", "orjson ms", "stdlib json ms", "answer bytes"],
        [
            [
                e["tokens"],
                e["top_k"],
                f"{e['build_ms']:.2f}",
                f"{e['orjson_ms']:.2f}",
                f"{e['stdlib_json_ms']:.2f}",
                e["answer_bytes"],
            ]
            for e in encoding
        ],
    )
    print(
        f"\ntarget: gateway p50 <= {TARGET_RATIO}x direct for <= 256 tokens, K <= 10, 1 client: "
        f"{'met' if target_met else 'NOT met'}"
    )
    report = {
        "runs": [asdict(r) for r in runs],
        "comparison": comparison,
        "encoding": encoding,
        "target_ratio": TARGET_RATIO,
        "target_met": target_met,
    }
    print_json(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
