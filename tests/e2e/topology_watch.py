"""What the topology test watches while it runs: the gateway, probed every few tenths of a
second, and the replicas' Prometheus metrics, scraped into per-client request counts.

Why this module exists: tests/e2e/test_topology.py keeps the scenario and its checks;
these background threads and parsers are the instruments it reads, kept apart so each
file stays small. They know the metric names of opd_teacher.metrics and the gateway's
/v1/support route, nothing of the trainer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

PROBE_EVERY_S = 0.2
SCRAPE_EVERY_S = 0.5
Counts = dict[str, float]  # client -> successful Score/ScoreStream requests


def client(job: str) -> str:
    return f"opd-train:{job}"


def parse_counts(text: str) -> tuple[Counts, Counts]:
    """(OK requests, scored positions) per client from a teacher's /metrics text."""
    requests: Counts = {}
    positions: Counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            who = sample.labels.get("client", "")
            if family.name == "opd_teacher_requests" and sample.labels.get("code") == "OK":
                requests[who] = requests.get(who, 0.0) + sample.value
            elif family.name == "opd_teacher_scored_positions":
                positions[who] = positions.get(who, 0.0) + sample.value
    return requests, positions


def scrape(port: int) -> tuple[Counts, Counts] | None:
    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        reply.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse_counts(reply.text)


@dataclass
class Scrape:
    t: float
    replica: str
    requests: Counts | None  # None: the scrape failed
    positions: Counts | None


class Background(threading.Thread):
    """Calls `self.tick()` every `every_s` until `stop_event` is set."""

    def __init__(self, every_s: float) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.tick()
            self.stop_event.wait(self.every_s)

    def tick(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=15)


@dataclass
class Probe:
    sent: float
    answered: float
    status: int | str  # the HTTP status, or the name of the error when none came


class GatewayProbe(Background):
    """POSTs /v1/support and records each answer."""

    def __init__(self, port: int) -> None:
        super().__init__(PROBE_EVERY_S)
        self.url = f"http://127.0.0.1:{port}/v1/support"
        self.results: list[Probe] = []

    def tick(self) -> None:
        sent = time.monotonic()
        status: int | str
        try:
            reply = httpx.post(self.url, json={"text": "12+7=19", "top_k": 5}, timeout=15)
            status = reply.status_code
        except httpx.HTTPError as error:
            status = type(error).__name__
        self.results.append(Probe(sent, time.monotonic(), status))


class MetricsScraper(Background):
    def __init__(self, ports: dict[str, int]) -> None:
        super().__init__(SCRAPE_EVERY_S)
        self.ports = ports
        self.scrapes: list[Scrape] = []

    def tick(self) -> None:
        for name, port in self.ports.items():
            sent = time.monotonic()
            got = scrape(port)
            self.scrapes.append(Scrape(sent, name, *(got or (None, None))))
