"""Creates what the services expect to exist: the bucket and the topics (with their dead-letter
topics). Idempotent. Run by the dev overlay's Job (``python -m signwatch.provision``); the
services also create what is missing on start, but with a Job the partition count is decided
once, before the first consumer joins.
"""

from __future__ import annotations

import json
import sys

from signwatch.config import Settings
from signwatch.consuming import dlq_topic
from signwatch.runtime import open_ports


def topics(settings: Settings) -> list[str]:
    consumed = [settings.inference_topic, settings.violations_topic, settings.ground_truth_topic,
                settings.screening_topic]  # have DLQs
    names = consumed + [settings.explanations_topic, settings.baselines_topic]
    return names + [dlq_topic(t) for t in consumed]


def provision(settings: Settings) -> dict:
    ports = open_ports(settings)
    try:
        ports.bus.ensure_topics(topics(settings), settings.topic_partitions)
        marker = "signwatch/.provisioned"
        ports.store.put(marker, b"ok\n", "text/plain")  # creates the bucket when missing
        ok = {"bus": ports.bus.ping(), "store": ports.store.exists(marker), "state": ports.state.ping()}
    finally:
        ports.close()
    if not all(ok.values()):
        raise RuntimeError(f"not every server answers: {ok}")
    return {"topics": topics(settings), "partitions": settings.topic_partitions, "checks": ok}


def main() -> int:
    try:
        print(json.dumps(provision(Settings())))
    except Exception as exc:  # noqa: BLE001 - the Job retries; one line says why
        print(f"signwatch provision: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
