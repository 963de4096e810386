"""Prometheus collectors of the service, on a registry owned by each app (no global state).

The names here are a contract with the Grafana dashboard and the Kubernetes HPA under
``docker/`` and ``k8s/``; the deployment tests check that every metric they query exists here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """All collectors of one service instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "rise_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "rise_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.solves = Counter(
            "rise_solves",
            "Finished solves by answer mode and stop reason.",
            ["mode", "stop_reason"],
            registry=r,
        )
        self.solve_duration = Histogram(
            "rise_solve_duration_seconds",
            "Wall time of one solve, all turns.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turns_used = Histogram(
            "rise_turns_used",
            "Turns taken per solve.",
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 20, 50),
            registry=r,
        )
        self.answer_changes = Counter(
            "rise_answer_changes",
            "Answer changes between consecutive turns; with a reference also wrong_to_right "
            "and right_to_wrong.",
            ["kind"],
            registry=r,
        )
        self.vote_margin = Histogram(
            "rise_vote_margin",
            "Votes of the winning answer minus the runner-up's.",
            buckets=(0, 1, 2, 3, 4, 5, 10, 20),
            registry=r,
        )
        self.tokens = Counter(
            "rise_tokens",
            "Tokens by kind: prompt, generated, cached (prompt tokens from the prefix cache).",
            ["kind"],
            registry=r,
        )
        self.active_sessions = Gauge(
            "rise_active_sessions", "Sessions stored and not expired.", registry=r
        )
        self.solves_in_flight = Gauge(
            "rise_solves_in_flight", "Solves running or waiting for a slot.", registry=r
        )
        self.engine_queue_depth = Gauge(
            "rise_engine_queue_depth", "Engine requests submitted and not finished.", registry=r
        )
        self.rejected = Counter(
            "rise_solves_rejected", "Solves refused with 429 beyond the queue.", registry=r
        )


# Metric families queried by the dashboard and the autoscaler (sample names as exported).
EXPORTED_NAMES = (
    "rise_http_requests_total",
    "rise_http_request_duration_seconds",
    "rise_solves_total",
    "rise_solve_duration_seconds",
    "rise_turns_used",
    "rise_answer_changes_total",
    "rise_vote_margin",
    "rise_tokens_total",
    "rise_active_sessions",
    "rise_solves_in_flight",
    "rise_engine_queue_depth",
    "rise_solves_rejected_total",
)
