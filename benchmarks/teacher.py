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

Backends (`--backends`, on by default): the hf and vllm backends (vllm from `.venv-vllm`,
`make install-vllm`) serve the same model and the same requests (128-1,024 tokens, K = 32)
at 1, 8 and 64 concurrent streams: positions/s, p50/p99, wire bytes per position and the
server's CPU time per position (its whole process tree, vLLM's engine core included). It
also times vLLM's output conversion on real `LogprobsTensors` (run inside `.venv-vllm`):
dicts per position against `flat_logprobs` plus opd's reshape.

    .venv/bin/python benchmarks/teacher.py --quick --only-backends
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
REPO_ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
VLLM_FLAGS = ["--backend", "vllm", "--dtype", "float32", "--enforce-eager"]


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
    cpu_ms_per_position: float | None = None


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


def _tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and its live descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += times.get(pid, 0.0)
        frontier += [child for child, parent in parents.items() if parent == pid]
    return total


def vllm_env() -> dict[str, str]:
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(REPO_ROOT / ".cache" / "vllm"),
    }


def run_service(
    model_dir: Path,
    name: str,
    seqs: list[list[int]],
    clients: int,
    policy: str,
    flags: list[str],
) -> tuple[Run, float]:
    """One `opd-teacher serve` child; `flags` override the batching defaults."""
    runs, bytes_per_position = serve_and_drive(model_dir, name, seqs, (clients,), policy, flags)
    return runs[0], bytes_per_position


def serve_and_drive(
    model_dir: Path,
    name: str,
    seqs: list[list[int]],
    counts: tuple[int, ...],
    policy: str,
    flags: list[str],
    python: Path | str = sys.executable,
    env: dict[str, str] | None = None,
) -> tuple[list[Run], float]:
    """One server (`python -m opd_teacher.cli serve ... flags`) driven at each client count."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(python),
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
        env=env,
    )
    address = f"127.0.0.1:{port}"
    positions = sum(len(s) for s in seqs)
    runs: list[Run] = []
    try:

        async def session() -> float:
            async with TeacherClient(address, timeout_s=120) as client:
                await client.wait_ready(timeout_s=300)
            await _drive(address, seqs, counts[0])  # untimed pass, as for the bare model
            for count in counts:
                cpu_before = _tree_cpu_s(server.pid)
                latencies, wall = await _drive(address, seqs, count)
                cpu_s = _tree_cpu_s(server.pid) - cpu_before
                run = _summary(name, "service", count, policy, seqs, latencies, wall)
                run.cpu_ms_per_position = round(1000 * cpu_s / positions, 4)
                runs.append(run)
            return await _wire_bytes(address, seqs[0])

        bytes_per_position = asyncio.run(session())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return runs, bytes_per_position


def backend_workload(count: int, vocab: int, seed: int = 1) -> list[list[int]]:
    """128-1,024 tokens per sequence, the lengths of the backend comparison."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, vocab, size=int(rng.integers(128, 1025))).tolist() for _ in range(count)
    ]


def run_backends(models: list[tuple[str, Path, int]], count: int) -> tuple[list[Run], dict]:
    """hf against vllm on the same model and requests at 1, 8 and 64 streams."""
    if not VLLM_PYTHON.exists():
        raise SystemExit(".venv-vllm is missing: run `make install-vllm`")
    runs: list[Run] = []
    report: dict[str, object] = {}
    for name, model_dir, vocab in models:
        seqs = backend_workload(count, vocab)
        per_backend = {}
        for backend, python, flags, env in (
            ("hf", sys.executable, [], None),
            ("vllm", VLLM_PYTHON, VLLM_FLAGS, vllm_env()),
        ):
            these, wire = serve_and_drive(
                model_dir, name, seqs, (1, 8, 64), backend, flags, python, env
            )
            runs += these
            per_backend[backend] = {
                "wire_bytes_per_position": round(wire, 1),
                **{f"positions_per_s_at_{r.clients}": r.positions_per_s for r in these},
                **{f"cpu_ms_per_position_at_{r.clients}": r.cpu_ms_per_position for r in these},
            }
        report[name] = per_backend
    report["conversion"] = json.loads(
        subprocess.run(
            [str(VLLM_PYTHON), __file__, "--convert-only"],
            capture_output=True,
            text=True,
            check=True,
            env=vllm_env(),
        ).stdout.splitlines()[-1]
    )
    return runs, report


def convert_only(num_tokens: int = 1024, top_k: int = TOP_K, repeats: int = 20) -> dict:
    """Inside .venv-vllm: vLLM's own output processing of one request's prompt log-probs
    (`LogprobsProcessor`, as AsyncLLM runs it) plus opd's conversion, dicts vs flat."""
    from vllm.v1.engine.logprobs import LogprobsProcessor
    from vllm.v1.outputs import LogprobsTensors

    from opd_teacher.engine.vllm_convert import result_from_rows, rows_from_dicts, rows_from_flat
    from opd_teacher.types import ScoreJob

    generator = torch.Generator().manual_seed(0)
    logprobs_NV = torch.log_softmax(3 * torch.randn(num_tokens, 512, generator=generator), -1)
    ids_N = torch.randint(0, 512, (num_tokens,), generator=generator)
    values_NK, topk_NK = logprobs_NV.topk(top_k)
    actual_N = logprobs_NV[:-1].gather(1, ids_N[1:, None])
    tensors = LogprobsTensors(
        torch.cat([ids_N[1:, None], topk_NK[:-1]], 1).to(torch.int32),
        torch.cat([actual_N, values_NK[:-1]], 1),
        (logprobs_NV[:-1] > actual_N).sum(1).to(torch.int32) + 1,
    )
    last = LogprobsTensors(
        torch.cat([topk_NK[-1:, :1], topk_NK[-1:]], 1).to(torch.int32),
        torch.cat([values_NK[-1:, :1], values_NK[-1:]], 1),
        torch.ones(1, dtype=torch.int32),
    )
    job = ScoreJob("b", "b", ids_N.numpy().astype(np.int32), top_k, return_token_logprobs=True)
    timings = {}
    for flat in (False, True):
        best = float("inf")
        for _ in range(repeats):
            processor = LogprobsProcessor(
                tokenizer=None,
                logprobs=[] if not flat else None,
                prompt_logprobs=None,
                cumulative_logprob=0.0,
                num_logprobs=top_k,
                num_prompt_logprobs=top_k,
            )
            from vllm.logprobs import create_prompt_logprobs, create_sample_logprobs

            processor.prompt_logprobs = create_prompt_logprobs(flat)
            processor.logprobs = create_sample_logprobs(flat)
            t0 = time.perf_counter()
            processor._update_prompt_logprobs(tensors)
            processor._update_sample_logprobs(last.tolists())
            if flat:
                rows = rows_from_flat(
                    processor.prompt_logprobs, processor.logprobs, num_tokens, top_k
                )
            else:
                rows = rows_from_dicts(
                    processor.prompt_logprobs, processor.logprobs, job.token_ids_N, top_k
                )
            result_from_rows(rows, job)
            best = min(best, time.perf_counter() - t0)
        timings["flat" if flat else "dicts"] = best
    return {
        "positions": num_tokens,
        "top_k": top_k,
        "dicts_ms": round(1000 * timings["dicts"], 2),
        "flat_ms": round(1000 * timings["flat"], 2),
        "dicts_over_flat": round(timings["dicts"] / timings["flat"], 2),
    }


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
    parser.add_argument(
        "--backends",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare the hf and vllm backends (needs .venv-vllm)",
    )
    parser.add_argument("--only-backends", action="store_true", help="only the backend comparison")
    parser.add_argument("--convert-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert_only:  # run by run_backends inside .venv-vllm
        print(json.dumps(convert_only()))
        return 0
    torch.manual_seed(0)
    tiny = ensure_tiny_teacher()
    medium = build_medium_model(tiny)
    runs: list[Run] = []
    report: dict[str, object] = {}
    rounds = 1 if args.quick else args.rounds
    comparisons = (
        []
        if args.only_backends
        else [
            ("tiny", tiny, 512, 16 if args.quick else 64),
            ("llama-58m", medium, 32000, 8 if args.quick else 48),
        ]
    )
    for name, model_dir, vocab, count in comparisons:
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
    if args.backends or args.only_backends:
        models = [("tiny", tiny, 512)] + ([] if args.quick else [("llama-58m", medium, 32000)])
        backend_runs, report["backends"] = run_backends(models, 16 if args.quick else 64)
        runs += backend_runs
    report["target"] = "service_over_bare_at_64_clients <= 1.10 on llama-58m (CPU)"
    report["runs"] = [asdict(r) for r in runs]
    header = (
        f"{'model':<10} {'mode':<11} {'clients':>7} {'policy':<20} {'pos/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'wall s':>7} {'cpu ms/pos':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        print(
            f"{r.model:<10} {r.mode:<11} {r.clients:>7} {r.policy:<20} {r.positions_per_s:>9.1f} "
            f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.wall_s:>7.2f} "
            f"{'' if r.cpu_ms_per_position is None else r.cpu_ms_per_position:>10}"
        )
    for name in ("tiny", "llama-58m", "backends"):
        if name in report:
            print(f"{name}: {json.dumps(report[name])}")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
