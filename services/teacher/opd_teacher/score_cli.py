"""`opd-teacher score`: a readable table (or JSON) of a running teacher's view of a text.

It is a client of the service like any other (through `SyncTeacherClient`), and decodes
token strings with the teacher's own tokenizer from `GetTokenizer`: no download, no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import grpc
from tokenizers import Tokenizer

from opd_client import SyncTeacherClient


def _piece(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def run_score(args: argparse.Namespace) -> int:
    token = args.auth_token_file.read_text().strip() if args.auth_token_file else None
    try:
        with SyncTeacherClient(args.teacher, timeout_s=args.timeout_s, auth_token=token) as teacher:
            files = teacher.get_tokenizer()
            out = teacher.score(
                args.ids, text=args.text, top_k=args.top_k, return_token_logprobs=True
            )
    except grpc.RpcError as error:
        print(f"opd-teacher score: {error.code().name}: {error.details()}", file=sys.stderr)
        return 2
    tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
    ids = out.token_ids_N.tolist() if out.token_ids_N is not None else list(args.ids)
    assert out.token_logprobs_P is not None and out.token_ranks_P is not None
    rows: list[dict[str, Any]] = []
    for p in range(out.num_positions):
        next_id = ids[p + 1] if p + 1 < len(ids) else None
        rows.append(
            {
                "position": p,
                "token": _piece(tokenizer, ids[p]),
                "next_token": None if next_id is None else _piece(tokenizer, next_id),
                "next_logprob": None if next_id is None else float(out.token_logprobs_P[p]),
                "next_rank": None if next_id is None else int(out.token_ranks_P[p]),
                "top": [
                    {"token": _piece(tokenizer, int(i)), "id": int(i), "logprob": float(lp)}
                    for i, lp in zip(out.topk_ids_PK[p], out.topk_logprobs_PK[p], strict=True)
                ],
            }
        )
    if args.json:
        print(json.dumps({"token_ids": ids, "positions": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"teacher top-{args.top_k} after each token (p = probability)")
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("next (rank, p)")
    table.add_column(f"teacher's top-{args.top_k}")
    for row in rows:
        nxt = (
            "—"
            if row["next_token"] is None
            else f"{row['next_token']!r} (#{row['next_rank']}, {math.exp(row['next_logprob']):.2f})"
        )
        top = "  ".join(f"{t['token']!r} {math.exp(t['logprob']):.2f}" for t in row["top"])
        table.add_row(str(row["position"]), repr(row["token"]), nxt, top)
    Console(width=160).print(table)
    return 0
