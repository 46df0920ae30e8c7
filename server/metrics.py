"""Prometheus metrics of one application, in a registry of its own.

Each ``make_app`` gets its own ``Metrics`` (so several apps can live in one test
process); ``/metrics`` renders ``registry`` in the Prometheus text format.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others count as "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # this app's metrics only
        self.requests = Counter("http_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ws_connections = Gauge("ws_connections", "Open WebSocket connections", registry=self.registry)
        self.ws_subscriptions = Gauge("ws_subscriptions", "Channel subscriptions of open connections",
                                      registry=self.registry)
        self.messages_published = Counter("messages_published", "Messages stored and published",
                                          registry=self.registry)
        self.messages_delivered = Counter("messages_delivered", "Messages delivered to connections",
                                          registry=self.registry)
        self.ws_closed = Counter("ws_closed", "WebSocket connections closed by the server, by close code",
                                 ["code"], registry=self.registry)
        self.ws_command_latency = Histogram("ws_command_duration_seconds", "WebSocket command latency, by op",
                                            ["op"], buckets=LATENCY_BUCKETS, registry=self.registry)

        self.connections_refused = Counter("connections_refused", "Connections accepted past MAX_CONNECTIONS and "
                                           "refused (503, or closed past the overflow reserve)", registry=self.registry)
        self.accept_pauses = Counter("accept_pauses", "Pauses of accepting new connections while the process is out "
                                     "of descriptors (EMFILE, ENFILE) or accept failed otherwise",
                                     registry=self.registry)
        self._answered: dict[tuple[str, str, int], Any] = {}  # (route, method, status): its requests child
        self._latencies: dict[str, Any] = {}  # route: its latency child
        self.broker_up = Gauge("broker_up", "1 while messages reach the other processes (Redis answers); "
                               "always 1 with one process", registry=self.registry)
        self.messages_filled = Gauge("messages_filled_from_store", "Messages of other processes read from "
                                     "MongoDB (a gap, or a catch-up after Redis was away)", registry=self.registry)

    def answered(self, route: str, method: str, status: int, seconds: float | None = None) -> None:
        """Counts a request answered (and its latency, when given): the labelled
        children are kept, since looking them up took a lock and a tuple of
        strings on each of a reconnect storm's handshakes."""
        if method not in METHODS:
            method = "other"  # any token is a method to HTTP: a label per one would grow without bound
        key = (route, method, status)
        counter = self._answered.get(key)
        if counter is None:
            counter = self._answered[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        if seconds is not None:
            histogram = self._latencies.get(route)
            if histogram is None:
                histogram = self._latencies[route] = self.latency.labels(route)
            histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
