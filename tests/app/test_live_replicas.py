"""Two app replicas behind Debian's nginx running the shipped docker/nginx/rise.conf, sharing
one real Redis, on loopback (the harness and figures are bench/bench_replicas.py's).

- Affinity: sessions continued through the proxy land on the replica that created them and hit
  its prefix cache: the cached share of earlier-turn tokens is at least 90% of the figure on a
  single replica, while the control (continuing on the other replica) shows what a miss is.
- A replica SIGKILLed mid-traffic: only requests in flight on it fail, each with the proxy's
  JSON error; every session, the killed replica's included, continues through the proxy from
  the token ids stored in Redis, with its earlier turns intact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_replicas import cluster, kill_under_traffic, measure_affinity
from testbed.processes import RedisServer

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]


def test_two_replicas_behind_nginx_keep_sessions_and_survive_a_kill(
    tiny_model_dir: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    with cluster(str(tiny_model_dir), tmp_path, redis_url=redis_server.url) as running:
        affinity = measure_affinity(running, sessions=8, max_tokens=64)
        assert all(n > 0 for n in affinity["sessions_per_replica"]), affinity  # both serve
        assert affinity["continued_on_creating_replica"] == 8, affinity
        assert affinity["proxy_over_one_replica"] >= 0.9, affinity
        # the control: the measurement sees a replica without the session's prefix
        other = affinity["cached_share_other_replica"]
        assert other < 0.5 * affinity["cached_share_through_proxy"], affinity

        kill = kill_under_traffic(running, sessions=12, max_tokens=512, kill_after_s=0.5)
        assert kill["in_flight_on_killed_replica_at_kill"] >= 1, f"the kill hit no traffic: {kill}"
        # only requests in flight on the killed replica failed, each with a clear error
        assert kill["failed"] == kill["failed_in_flight_on_killed_replica"], kill
        assert kill["failed"] == kill["failed_with_clear_error"], kill
        # no stored session lost: all continue, the killed replica's on the survivor
        assert kill["sessions_lost"] == 0 and kill["continued_after_kill"] == 12, kill
        assert kill["killed_replicas_sessions_on_survivor"] == kill["sessions_on_killed_replica"]
        assert kill["earlier_turns_kept"] == 12, kill
