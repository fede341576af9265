"""Teacher service throughput and latency against the bare model, in one run.

    .venv/bin/python benchmarks/teacher.py [--quick] [--json-out FILE]

For the tiny test model and a ~58M-parameter Llama with random weights (so model time
is not negligible), it scores the same sequences (16-512 tokens, K = 32):
  * in-process, one at a time: `log_softmax(model(ids).logits).topk(K)` (the baseline);
  * through `opd-teacher serve` (a child process) at 1, 8 and 64 concurrent clients;
  * at 64 clients, under several batching policies (no batching, padded batches, length
    bucketing), which is how the CPU defaults of BatcherConfig were chosen.
It prints a table and JSON: scored positions/s, p50/p99 latency, the service's time
over the baseline's (target on CPU: at most 1.10 at 64 clients on the larger model) with
the absolute overhead per request, and wire bytes per scored position next to a
full-vocabulary float32 row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import transformers

from opd_client import TeacherClient
from opd_client.types import build_request
from opd_teacher.config import BatcherConfig
from opd_teacher.demo import free_port
from opd_teacher.tiny import cache_dir, ensure_tiny_teacher

TOP_K = 32


@dataclass
class Run:
    model: str
    mode: str
    clients: int
    policy: str
    requests: int
    positions: int
    wall_s: float
    positions_per_s: float
    p50_ms: float
    p99_ms: float


def build_medium_model(tokenizer_source: Path) -> Path:
    """A ~58M-parameter Llama (8 layers, hidden 512, vocab 32,000), random weights."""
    target = cache_dir() / "bench-llama-58m"
    if (target / "config.json").is_file():
        return target
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_source / name).is_file():
            shutil.copy(tokenizer_source / name, target / name)
    return target


def workload(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(16, 513))).tolist() for _ in range(count)]


def _summary(
    model: str,
    mode: str,
    clients: int,
    policy: str,
    seqs: list[list[int]],
    latencies_s: list[float],
    wall_s: float,
) -> Run:
    positions = sum(len(s) for s in seqs)
    return Run(
        model=model,
        mode=mode,
        clients=clients,
        policy=policy,
        requests=len(seqs),
        positions=positions,
        wall_s=round(wall_s, 3),
        positions_per_s=round(positions / wall_s, 1),
        p50_ms=round(1000 * float(np.percentile(latencies_s, 50)), 1),
        p99_ms=round(1000 * float(np.percentile(latencies_s, 99)), 1),
    )


def run_bare(model_dir: Path, name: str, seqs: list[list[int]]) -> Run:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    latencies = []
    with torch.inference_mode():
        # One untimed pass: the first forward at each new length pays for allocator and
        # kernel set-up, which a long-running teacher has long paid; the service side
        # gets the same untimed pass.
        for ids in seqs:
            model(input_ids=torch.tensor([ids]))
        started = time.perf_counter()
        for ids in seqs:
            t0 = time.perf_counter()
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            values, indices = torch.log_softmax(logits.float(), -1).topk(TOP_K, dim=-1)
            values.numpy(), indices.to(torch.int32).numpy()
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
    del model
    return _summary(name, "in-process", 1, "one at a time", seqs, latencies, wall)


async def _drive(address: str, seqs: list[list[int]], clients: int) -> tuple[list[float], float]:
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for ids in seqs:
        queue.put_nowait(ids)
    latencies: list[float] = []

    async def worker(index: int) -> None:
        async with TeacherClient(address, timeout_s=600, client_name=f"bench-{index}") as client:
            while not queue.empty():
                ids = queue.get_nowait()
                t0 = time.perf_counter()
                await client.score(ids, top_k=TOP_K)
                latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies, time.perf_counter() - started


async def _wire_bytes(address: str, ids: list[int]) -> float:
    async with TeacherClient(address, timeout_s=600) as client:
        stub = client._stub()
        response = await stub.Score(build_request("bytes", ids, top_k=TOP_K), timeout=600)
    return response.ByteSize() / response.num_positions


def run_service(
    model_dir: Path,
    name: str,
    seqs: list[list[int]],
    clients: int,
    policy: str,
    flags: list[str],
) -> tuple[Run, float]:
    """One `opd-teacher serve` child; `flags` override the batching defaults."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opd_teacher.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *flags,
        ],
    )
    address = f"127.0.0.1:{port}"
    try:

        async def session() -> tuple[list[float], float, float]:
            async with TeacherClient(address, timeout_s=120) as client:
                await client.wait_ready(timeout_s=300)
            await _drive(address, seqs, clients)  # untimed pass, as for the bare model
            latencies, wall = await _drive(address, seqs, clients)
            return latencies, wall, await _wire_bytes(address, seqs[0])

        latencies, wall, bytes_per_position = asyncio.run(session())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return _summary(name, "service", clients, policy, seqs, latencies, wall), bytes_per_position


POLICIES = {
    "no batching": ["--max-batch-sequences", "1"],
    "pad 512 tok": ["--max-batch-tokens", "512"],
    "pad 4096 tok": ["--max-batch-tokens", "4096"],
    "bucket 25% 4096 tok": ["--max-batch-tokens", "4096", "--max-padding-fraction", "0.25"],
}
_DEFAULTS = BatcherConfig()
DEFAULT_POLICY = f"default ({_DEFAULTS.max_batch_tokens} tok, {_DEFAULTS.max_batch_sequences} seq)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sequences (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved bare/service rounds")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    torch.manual_seed(0)
    tiny = ensure_tiny_teacher()
    medium = build_medium_model(tiny)
    runs: list[Run] = []
    report: dict[str, object] = {}
    rounds = 1 if args.quick else args.rounds
    for name, model_dir, vocab, count in (
        ("tiny", tiny, 512, 16 if args.quick else 64),
        ("llama-58m", medium, 32000, 8 if args.quick else 48),
    ):
        seqs = workload(count, vocab)
        # The headline ratio alternates bare and service runs, so that load from other
        # processes on a shared machine hits both sides alike; the median is reported.
        ratios, overheads_ms = [], []
        bytes_per_position = 0.0
        for _ in range(rounds):
            bare = run_bare(model_dir, name, seqs)
            at_64, bytes_per_position = run_service(model_dir, name, seqs, 64, DEFAULT_POLICY, [])
            runs += [bare, at_64]
            ratios.append(at_64.wall_s / bare.wall_s)
            overheads_ms.append(1000 * (at_64.wall_s - bare.wall_s) / len(seqs))
        for clients in (1, 8):
            run, _ = run_service(model_dir, name, seqs, clients, DEFAULT_POLICY, [])
            runs.append(run)
        policy_ratios = {}
        for policy, flags in POLICIES.items():
            run, _ = run_service(model_dir, name, seqs, 64, policy, flags)
            runs.append(run)
            policy_ratios[policy] = round(run.wall_s / bare.wall_s, 3)
        report[name] = {
            "service_over_bare_at_64_clients": round(float(np.median(ratios)), 3),
            "service_over_bare_each_round": [round(r, 3) for r in ratios],
            "overhead_ms_per_request_at_64": round(float(np.median(overheads_ms)), 2),
            "policy_wall_over_last_bare_at_64": policy_ratios,
            "wire_bytes_per_position": round(bytes_per_position, 1),
            "full_vocab_float32_row_bytes": vocab * 4,
        }
    report["target"] = "service_over_bare_at_64_clients <= 1.10 on llama-58m (CPU)"
    report["runs"] = [asdict(r) for r in runs]
    header = (
        f"{'model':<10} {'mode':<11} {'clients':>7} {'policy':<20} {'pos/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        print(
            f"{r.model:<10} {r.mode:<11} {r.clients:>7} {r.policy:<20} {r.positions_per_s:>9.1f} "
            f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.wall_s:>7.2f}"
        )
    for name in ("tiny", "llama-58m"):
        print(f"{name}: {json.dumps(report[name])}")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
