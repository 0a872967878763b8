"""Prometheus metrics on the daemon's own registry (no process-global default collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
disable_created_metrics()  # the *_created series only add noise on a device

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edge_runtime_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "edge_runtime_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "edge_runtime_predictions", "Texts answered, by routing decision", ["decision"], registry=r
        )
        self.rejected = Counter(
            "edge_runtime_rejected", "Requests refused before inference, by reason", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "edge_runtime_batch_size", "Texts per inference run", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "edge_runtime_batch_seconds", "Inference time per run", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("edge_runtime_queue_depth", "Texts admitted and not yet answered", registry=r)
        self.outbox_pending = Gauge("edge_runtime_outbox_pending", "Escalations waiting in the outbox", registry=r)
        self.outbox_dead = Gauge("edge_runtime_outbox_dead_letters", "Escalations in dead letters", registry=r)
        self.outbox_available = Gauge(
            "edge_runtime_outbox_available", "1 when the outbox can store escalations, 0 when not", registry=r
        )
        self.outbox_recovered = Gauge(
            "edge_runtime_outbox_recovered", "1 when a corrupt outbox was moved aside at start", registry=r
        )
        self.outbox_failures = Gauge(
            "edge_runtime_outbox_write_failures",
            "Outbox transactions SQLite refused since start (those escalations stayed local)",
            registry=r,
        )
        self.escalation_rate = Gauge(
            "edge_runtime_escalation_rate", "Share of escalations over the router's window", registry=r
        )
        self.model = Gauge(
            "edge_runtime_model_info", "The serving model (value 1)", ["name", "version", "release"], registry=r
        )
        self.reloads = Counter("edge_runtime_reloads", "Model reloads by result", ["result"], registry=r)
        self.privacy_available = Gauge(
            "edge_runtime_privacy_available",
            "1 when escalations may leave the device, 0 while the required PII tagger is not loaded",
            registry=r,
        )
        self.tagger_loaded = Gauge(
            "edge_runtime_tagger_loaded",
            "1 while the PII tagger's session is in memory (a lazy tagger loads on use, unloads when idle)",
            registry=r,
        )
        self.kept_local = Counter(
            "edge_runtime_kept_local",
            "Escalations kept on the device to protect personal data, by reason",
            ["reason"],
            registry=r,
        )
        self.uptime = Gauge("edge_runtime_uptime_seconds", "Seconds since the daemon started", registry=r)

    def set_model(self, name: str, version: str, release) -> None:
        self.model.clear()
        self.model.labels(name, version, str(release)).set(1)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    @staticmethod
    def totals(counter: Counter) -> dict[str, float]:
        """{label value: count} of a one-label counter (what /v1/status shows of it)."""
        return {
            label: sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
            for label in sample.labels.values()
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)
