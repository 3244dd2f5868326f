"""Correlated frames on the real Kafka, Redis and S3 (issue 17): a burst of one sign counts once.

A quiet endpoint (0.2 requests a second of clean rendered signs for 15 minutes) then gets 200
frames of one "Keep right" in 10 s, rendered as a passing car sees them; another gets 200 images
of different signs, each answered "Stop" (what an attack on many signs looks like to the monitor;
a real PGD attack on 200 images would take 15 to 30 s of this test's CPU, and the monitor sees only
the answers and the hashes). Every event carries the served image hash (``imaging.perceptual_hash``)
and, but for the Stop answers, the shipped model's real answer; the monitor service's loop counts
them through Kafka, with its windows and tracks in Redis.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from signwatch.data.burst import passing_frames
from signwatch.data.render import render_array
from signwatch.events import InferenceEvent
from signwatch.imaging import perceptual_hash
from signwatch.model.core import load_spec
from signwatch.monitoring.streams import event_from
from signwatch.runtime import open_ports
from signwatch_services.monitor.server import build_loop
from tests.integration.test_monitor_stack import PAYLOAD, _publish, _read_topic, _run_until_counted, _settings

pytestmark = pytest.mark.stack
SHIPPED = load_spec()
KEEP_RIGHT, STOP = 38, 14
QUIET_S, QUIET_RATE, BURST = 900, 0.2, 200


def _answered(model, spec, images: np.ndarray, answer: int | None = None):
    """Per image: its (top-5 ids, probabilities) as a one-row pool (the model's, or ``answer`` at
    0.99 on top of them), and its served hash."""
    from signwatch.monitoring.reference import predict_top

    ids, probs = predict_top(model, spec, images)
    if answer is not None:
        ids = np.array([[answer] + [c for c in row if c != answer][:4] for row in ids])
        probs = np.concatenate([np.full((len(ids), 1), 0.99), probs[:, :4] * 0.01], axis=1)
    return [((ids[i:i + 1], probs[i:i + 1]), perceptual_hash(im)) for i, im in enumerate(images)]


@pytest.fixture(scope="module")
def traffic():
    from signwatch.model import load_model

    model, spec = load_model()
    quiet, _ = render_array(int(QUIET_S * QUIET_RATE), seed=71, split="test", size=spec.input_size, progress=False)
    burst = passing_frames(KEEP_RIGHT, BURST, seed=72, size=spec.input_size)
    signs, _ = render_array(BURST, seed=73, split="test", size=spec.input_size, progress=False)
    return {"quiet": _answered(model, spec, quiet), "burst": _answered(model, spec, burst),
            "stop": _answered(model, spec, signs, answer=STOP)}


def _events(answered, endpoint: str, start: float, rate: float) -> list[InferenceEvent]:
    return [event_from(pool, 0, endpoint, start + i / rate, PAYLOAD).model_copy(update={"image_hash": h})
            for i, (pool, h) in enumerate(answered)]


def test_a_burst_of_one_sign_raises_nothing_while_stop_answers_for_different_signs_are_caught(
        stack, unique, traffic):
    now = time.time()
    burst_rate = BURST / 10  # 200 frames in 10 s
    loops, totals, settings_of = [], [], {}
    for name in ("burst", "stop"):
        s = _settings(stack, f"trk-{name}-{unique}")
        events = (_events(traffic["quiet"], s.endpoint, now - QUIET_S - 10, QUIET_RATE)
                  + _events(traffic[name], s.endpoint, now - 10, burst_rate))
        _publish(s, events)
        loops.append(build_loop(s, SHIPPED, ports=open_ports(s)))
        totals.append(len(events))
        settings_of[name] = s
    _run_until_counted(loops, totals, timeout_s=60)

    raised = {name: [v for v in _read_topic(stack["kafka"]["bootstrap"], s.violations_topic) if v.state == "open"]
              for name, s in settings_of.items()}
    assert raised["burst"] == [], [v.check.description for v in raised["burst"]]
    [incident] = raised["stop"]  # one incident, whatever checks fail in it
    assert incident.class_id == STOP, [v.check.description for v in raised["stop"]]

    # The burst was counted as a handful of observations (once per class the model answered with),
    # the images of different signs one by one.
    folded = loops[0].handler.metrics.folded.labels(settings_of["burst"].endpoint, "hash")._value.get()
    burst_classes = {int(pool[0][0, 0]) for pool, _ in traffic["burst"]}
    assert 1 <= BURST - folded <= len(burst_classes), (folded, burst_classes)  # once per class answered
    assert loops[1].handler.metrics.folded.labels(settings_of["stop"].endpoint, "hash")._value.get() <= 2
