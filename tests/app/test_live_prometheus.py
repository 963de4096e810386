"""A real Prometheus scrapes the live app; every dashboard and autoscaler query returns data.

Debian's ``prometheus`` (installed by the test set-up, ``scripts/install-deploy-tools.sh``)
scrapes the shared live server every second, labelled as a Kubernetes pod would be. After some
traffic, each PromQL expression of the Grafana dashboard (its variables filled in as Grafana
would) and the prometheus-adapter rule behind the HPA go through Prometheus's HTTP API and must
return at least one finite sample — not merely parse.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from testbed.processes import LiveServer, free_port, wait_ready

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "rise.json"
ADAPTER = REPO / "k8s" / "prometheus-adapter" / "values.yaml"
POD = {"namespace": "rise-test", "pod": "rise-0"}
# Grafana's variables as the dashboard would fill them: every instance, a rate window that
# holds many 1 s scrapes, the whole test as the range.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m", "$__range": "10m"}


class Prometheus:
    """``prometheus`` on a free loopback port, scraping one target every second."""

    def __init__(self, folder: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "rise",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target], "labels": POD}],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = folder / "prometheus.log"
        self.args = [
            "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("wb") as handle:
            self.proc = subprocess.Popen(self.args, stdout=handle, stderr=subprocess.STDOUT)
        wait_ready(f"{self.url}/-/ready", self.proc, self.tail, 60, "prometheus")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        assert body.get("status") == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def wait_for_scrapes(self, count: int = 3) -> None:
        """Until the target is up and has been scraped ``count`` more times."""

        def scrapes() -> float:
            result = self.query('count_over_time(up{job="rise"}[10m])')
            return float(result[0]["value"][1]) if result else 0.0

        goal, deadline = scrapes() + count, time.monotonic() + 60
        while scrapes() < goal:
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.5)
        (up,) = self.query('up{job="rise"}')
        assert up["value"][1] == "1", f"target down: {self.targets()}"

    def targets(self) -> object:
        return httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()


@pytest.fixture(scope="module")
def prometheus(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: run scripts/install-deploy-tools.sh (make test does)")
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{live.port}")
    server.start()
    yield server
    server.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables filled in) of every dashboard query."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    out = []
    for panel in [*panels, *(p for row in panels for p in row.get("panels", []))]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"an unfilled variable in {expr!r}"
            out.append((panel["title"], expr))
    return out


def adapter_query() -> str:
    """The HPA's metric as prometheus-adapter asks for it, for this pod."""
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
    matchers = ",".join(f'{k}="{v}"' for k, v in POD.items())
    query = rule["metricsQuery"]
    for name, value in {"Series": series, "LabelMatchers": matchers, "GroupBy": "pod"}.items():
        query = query.replace(f"<<.{name}>>", value)
    return query


def traffic(api: httpx.Client) -> None:
    """Solves that move every series: voted answers (exact grader), a reference, sessions."""
    probe = {"question": "Say a number.", "grader": "exact", "temperature": 0, "max_tokens": 8}
    first = api.post("/solve", json={**probe, "max_turns": 1}).json()
    answer = first["turns"][0]["answer"]
    for turns in (2, 3):
        body = api.post("/solve", json={**probe, "max_turns": turns, "reference": answer}).json()
        api.get(f"/sessions/{body['session_id']}").raise_for_status()
    api.post(
        "/v1/chat/completions",
        json={"model": "rise-2/" + api.get("/v1/models").json()["data"][0]["id"],
              "messages": [{"role": "user", "content": "2 + 2?"}], "max_tokens": 8},
    ).raise_for_status()  # fmt: skip


def test_every_dashboard_and_autoscaler_query_returns_data(
    prometheus: Prometheus, api: httpx.Client
) -> None:
    prometheus.wait_for_scrapes()
    traffic(api)
    prometheus.wait_for_scrapes(3)
    queries = [*dashboard_queries(), ("HPA: prometheus-adapter rule", adapter_query())]
    assert len(queries) > 20
    empty = []
    for title, expr in queries:
        result = prometheus.query(expr)
        values = [float(sample["value"][1]) for sample in result]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {expr} -> {values}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    (pod,) = prometheus.query(adapter_query())
    assert pod["metric"] == {"pod": POD["pod"]}  # the HPA's per-pod value
