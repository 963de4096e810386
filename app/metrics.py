"""Prometheus collectors of the service, on a registry owned by each app (no global state).

The names here are a contract with the Grafana dashboard and the Kubernetes HPA under
``docker/`` and ``k8s/``; the deployment tests check that every metric they query exists here.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rise.answers import extract_boxed, get_grader
from rise.episode import Episode, Outcome, Turn, Verdict
from rise.feedback.verifier import FAILURES
from rise.plan import BUILTIN_FEEDBACK
from rise.voting import ANSWER_MODES, Vote

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
        self.turn_answers = Counter(
            "rise_turn_answers",
            "Finished turns by model, answer mode and how their final answer was found: "
            "boxed (in \\boxed{}, as RISE's prompts ask), fallback (only by the grader's "
            "fallback: gsm8k's last number, exact's last line), none (no answer). A service "
            "whose sampling breaks shows as a jump in the share of turns without a boxed "
            "answer (the RiseAnswersWithoutBox alert, docker/prometheus/alerts.yml).",
            ["model", "mode", "extraction"],
            registry=r,
        )
        self.feedback = Counter(
            "rise_feedback",
            "Feedback given after a turn, by provider (fixed, oracle, calculator, or a "
            "configured verifier's name) and verdict (correct, incorrect, unknown).",
            ["provider", "verdict"],
            registry=r,
        )
        self.feedback_errors = Counter(
            "rise_feedback_errors",
            "Verifier calls that failed, by verifier and kind (timeout, unreachable, status, "
            "malformed); the turn went on with RISE's fixed prompt.",
            ["provider", "kind"],
            registry=r,
        )
        self.feedback_duration = Histogram(
            "rise_feedback_duration_seconds",
            "Time a feedback provider took to judge one turn.",
            ["provider"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.rejected = Counter(
            "rise_solves_rejected", "Solves refused with 429 beyond the queue.", registry=r
        )
        # Export every fixed label value from the start (at 0), so dashboards and rate() see
        # the series before the first event of its kind.
        for kind in ("changed", "wrong_to_right", "right_to_wrong"):
            self.answer_changes.labels(kind)
        for kind in ("prompt", "generated", "cached"):
            self.tokens.labels(kind)

    def serve_model(self, model: str, verifiers: Iterable[str] = ()) -> None:
        """Export the served model's answer series and the feedback providers' series from
        the start (at 0), so dashboards and the alert's rates see them before the first turn."""
        for mode in ANSWER_MODES:
            for kind in EXTRACTIONS:
                self.turn_answers.labels(model, mode, kind)
        verifiers = tuple(verifiers)
        for provider in (*BUILTIN_FEEDBACK, *verifiers):
            for verdict in Verdict:
                self.feedback.labels(provider, verdict.value)
        for verifier in verifiers:
            for kind in FAILURES:
                self.feedback_errors.labels(verifier, kind)

    # -- recording (called by app.service) ------------------------------------------------

    def record_turn(self, episode: Episode, turn: Turn, model: str, mode: str) -> None:
        """Tokens of one finished turn, how its answer was found, and how it moved from the
        previous turn's."""
        self.turn_answers.labels(model, mode, extraction(turn)).inc()
        if turn.feedback is not None:
            given = turn.feedback
            self.feedback.labels(given.provider, given.verdict.value).inc()
            self.feedback_duration.labels(given.provider).observe(given.latency_s)
            if given.error is not None:
                self.feedback_errors.labels(given.provider, given.error).inc()
        self.tokens.labels("prompt").inc(turn.prompt_tokens)
        self.tokens.labels("generated").inc(turn.output_tokens)
        self.tokens.labels("cached").inc(turn.cached_tokens)
        if turn.index == 0 or turn.index > len(episode.turns):
            return
        previous = episode.turns[turn.index - 1]
        before, after = previous.answer, turn.answer
        if before is None or after is None:
            changed = before is not after
        else:
            changed = not get_grader(episode.grader).equivalent(before, after)
        if changed:
            self.answer_changes.labels("changed").inc()
        if previous.outcome is not None and turn.outcome is not None:
            was, now = previous.outcome is Outcome.CORRECT, turn.outcome is Outcome.CORRECT
            if now and not was:
                self.answer_changes.labels("wrong_to_right").inc()
            elif was and not now:
                self.answer_changes.labels("right_to_wrong").inc()

    def record_episode(self, mode: str, episode: Episode, vote: Vote | None) -> None:
        """One finished (or cancelled) episode: its stop reason, turns and vote margin."""
        reason = episode.stop_reason.value if episode.stop_reason is not None else "unknown"
        self.solves.labels(mode, reason).inc()
        self.turns_used.observe(len(episode.turns))
        if vote is not None and vote.total:
            self.vote_margin.observe(vote.margin)


EXTRACTIONS = ("boxed", "fallback", "none")
"""How a turn's final answer was found (``rise_turn_answers_total``'s ``extraction`` label)."""


def extraction(turn: Turn) -> str:
    """``boxed`` when the turn's text has a ``\\boxed{}`` answer, ``fallback`` when only the
    grader's fallback found one, ``none`` when it has no answer."""
    if turn.answer is None:
        return "none"
    return "boxed" if extract_boxed(turn.text) is not None else "fallback"


# Metric families queried by the dashboard, the alerts and the autoscaler (sample names as
# exported).
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
    "rise_turn_answers_total",
    "rise_feedback_total",
    "rise_feedback_errors_total",
    "rise_feedback_duration_seconds",
)

# vLLM's own series on the same /metrics (the engine's registry, Engine.metrics_registry), as
# the dashboard reads them; the histograms export _bucket, _sum and _count.
ENGINE_GAUGES = (
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
)
ENGINE_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")
ENGINE_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:request_queue_time_seconds")
