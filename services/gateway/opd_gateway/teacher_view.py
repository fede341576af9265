"""What the gateway knows about its teacher: limits, identity and token strings.

Why this module exists: the gateway shows tokens as strings, which needs the teacher's
tokenizer, and checks K and lengths against the teacher's limits, which needs `GetInfo`.
The teacher may be down when the gateway starts, so both are fetched lazily — once,
under a lock — by the first request that finds the teacher reachable, and kept.
Per-id strings are decoded once into a list, so building a response is list indexing,
not tokenizer calls. This module knows `TeacherClient` and `tokenizers`; not HTTP.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import numpy as np
from tokenizers import Tokenizer

from opd.teacher.v1 import teacher_pb2
from opd_client import TeacherClient, TokenizerMismatchError
from opd_gateway.errors import GatewayError, from_rpc_error

_SPAN_WINDOW = 8
"""Tokens of left context used to measure each token's decoded length (see `spans`)."""


@dataclass(frozen=True)
class TeacherMeta:
    """The teacher's `GetInfo` and its tokenizer, fetched together."""

    info: teacher_pb2.TeacherInfo
    tokenizer: Tokenizer
    pieces: list[str]
    """pieces[id]: the decoded string of token `id` alone, for id in 0..vocab_size-1
    ('' for ids the tokenizer does not know, e.g. padded embedding rows)."""

    @classmethod
    def build(cls, info: teacher_pb2.TeacherInfo, files: dict[str, bytes]) -> TeacherMeta:
        tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
        size = max(int(info.vocab_size), tokenizer.get_vocab_size(with_added_tokens=True))
        pieces = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
        return cls(info=info, tokenizer=tokenizer, pieces=list(pieces))

    def spans(self, token_ids: list[int]) -> tuple[str, np.ndarray, np.ndarray]:
        """(decoded text, start_N, end_N): each token's [start, end) in the decoded text.

        For `token_ids` input the teacher returns no offsets, so they come from decoding.
        Token i's length is len(decode(w + [t_i])) - len(decode(w)) over a window w of
        the tokens before it: decoders that depend on context (a leading space dropped
        at the start, bytes of one character split over tokens) see the same context in
        both, so the difference is that token's share. Linear in N; if the pieces do not
        add up to the full decode (an exotic decoder), exact prefix decoding takes over.
        """
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        windows: list[list[int]] = []
        for i in range(len(token_ids)):
            start = max(0, i - _SPAN_WINDOW)
            windows.append(token_ids[start : i + 1])
            windows.append(token_ids[start:i])
        decoded = self.tokenizer.decode_batch(windows, skip_special_tokens=False)
        lengths = np.fromiter((len(d) for d in decoded), dtype=np.int64, count=len(decoded))
        ends = np.cumsum(np.maximum(lengths[0::2] - lengths[1::2], 0))
        if len(token_ids) and int(ends[-1]) != len(text):
            prefixes = self.tokenizer.decode_batch(
                [token_ids[: i + 1] for i in range(len(token_ids))], skip_special_tokens=False
            )
            ends = np.maximum.accumulate([min(len(p), len(text)) for p in prefixes])
        ends = np.asarray(ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        return text, starts, ends


class TeacherView:
    """Lazily loaded, then cached, `TeacherMeta` of the teacher behind `client`."""

    def __init__(self, client: TeacherClient, teacher: str) -> None:
        self._client = client
        self._teacher = teacher
        self._lock = asyncio.Lock()
        self._meta: TeacherMeta | None = None

    @property
    def loaded(self) -> TeacherMeta | None:
        return self._meta

    async def meta(self) -> TeacherMeta:
        """The teacher's meta; raises GatewayError (503 while the teacher is unreachable)."""
        if self._meta is not None:
            return self._meta
        async with self._lock:
            if self._meta is None:
                try:
                    info = await self._client.get_info()
                    files = await self._client.get_tokenizer()
                except grpc.RpcError as error:
                    raise from_rpc_error(error, self._teacher) from error
                except TokenizerMismatchError as error:
                    raise GatewayError(502, "DATA_LOSS", str(error)) from error
                if "tokenizer.json" not in files:
                    raise GatewayError(
                        502, "FAILED_PRECONDITION", "the teacher sent no tokenizer.json"
                    )
                # Decoding every id of a 150k vocabulary takes a moment: off the event loop.
                self._meta = await asyncio.to_thread(TeacherMeta.build, info, files)
            return self._meta
