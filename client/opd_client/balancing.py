"""Channels to one or several teacher replicas.

A list of addresses gets one channel per replica and calls go round-robin over them,
passing over a replica whose channel is failing, so a retry after UNAVAILABLE lands on
the next replica and a dead one stops taking turns. A single `dns:///name:port` target
gets one channel with gRPC's own round_robin policy over every address the name
resolves to (a Kubernetes headless service). Keep-alive and message caps come from
opd_protos, the same values the server allows.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import grpc

from opd.teacher.v1 import teacher_pb2_grpc
from opd_protos import grpc_message_options
from opd_protos.names import client_keepalive_options

_FAILING = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """'a:1,b:2' or ['a:1', 'b:2'] → ['a:1', 'b:2']; rejects an empty list."""
    if isinstance(targets, str):
        targets = targets.split(",")
    parsed = [t.strip() for t in targets if t.strip()]
    if not parsed:
        raise ValueError("targets: give at least one HOST:PORT (or dns:///NAME:PORT)")
    return parsed


class Replicas:
    def __init__(self, targets: str | Sequence[str], max_message_bytes: int) -> None:
        self.targets = parse_targets(targets)
        options = grpc_message_options(max_message_bytes) + client_keepalive_options()
        self._channels = []
        for target in self.targets:
            channel_options: list[tuple[str, int | str]] = list(options)
            if target.startswith("dns:"):
                channel_options.append(("grpc.service_config", _ROUND_ROBIN))
            self._channels.append(grpc.aio.insecure_channel(target, options=channel_options))
        self._stubs = [teacher_pb2_grpc.TeacherServiceStub(c) for c in self._channels]
        self._next = itertools.cycle(range(len(self._stubs)))

    @property
    def channels(self) -> list[grpc.aio.Channel]:
        return list(self._channels)

    def next_stub(self) -> teacher_pb2_grpc.TeacherServiceStub:
        """The next replica in turn, passing over those whose channel is failing (a
        killed replica would otherwise take every other call, and its retry); when all
        are failing, the next one anyway (gRPC reconnects on use)."""
        for _ in range(len(self._stubs)):
            index = next(self._next)
            state = self._channels[index].get_state(try_to_connect=False)
            if state not in _FAILING:
                return self._stubs[index]
        return self._stubs[next(self._next)]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
