"""Prometheus metrics for /metrics. One registry per app, so tests can run several apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tierbot_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("tierbot_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.handler_seconds = Histogram("tierbot_command_seconds", "Time to answer a chat message",
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
                                         registry=self.registry)
        self.commands = Counter("tierbot_commands", "Chat commands answered, by command", ["command"],
                                registry=self.registry)
        self.errors = Counter("tierbot_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.dedupe_hits = Counter("tierbot_callback_dedupe_hits", "WeCom retries recognised and not answered again",
                                   registry=self.registry)
        self.late_replies = Counter("tierbot_late_replies", "Answers that missed the passive-reply deadline",
                                    registry=self.registry)
        self.outbox_sent = Counter("tierbot_outbox_sent", "Outbox messages delivered to the WeCom API",
                                   registry=self.registry)
        self.outbox_failed = Counter("tierbot_outbox_failed", "Outbox messages given up on, by errcode",
                                     ["errcode"], registry=self.registry)
        self.outbox_retries = Counter("tierbot_outbox_retries", "Outbox sends to try again later, by errcode",
                                      ["errcode"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
