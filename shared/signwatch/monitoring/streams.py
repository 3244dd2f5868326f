"""Realistic monitor input for tests and the benchmark: the shipped model's real outputs on
rendered clean, snowy, night and foggy signs and on images attacked into Stop (targeted PGD,
16/255), as pools of top-5 predictions, and inference events resampled from those pools.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from signwatch.events import InferenceEvent, InferenceOutput, InputPayload, Prediction

SHIFTS = ("clean", "attacked", "snow", "night", "fog")
ATTACK_EPS, ATTACK_STEPS = 16 / 255, 10


def model_pools(sizes: dict[str, int], seed: int = 4242, progress: bool = False
                ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{shift: (top-5 class ids, top-5 probabilities, true labels)}`` of the shipped model,
    on the test split (never seen in training)."""
    from signwatch.data.render import render_array
    from signwatch.model import load_model
    from signwatch.model.core import to_unit_tensor
    from signwatch.monitoring.reference import predict_top

    model, spec = load_model()
    pools = {}
    for shift, n in sizes.items():
        if shift == "attacked":
            from signwatch.attacks import pgd

            images, labels = render_array(n, seed=seed + 1, split="test", size=spec.input_size, progress=progress)
            result = pgd(model, spec, to_unit_tensor(list(images), spec.input_size), target=14, eps=ATTACK_EPS,
                         steps=ATTACK_STEPS, seed=seed, batch_size=64, quantize_result=True)
            images = (result.adversarial.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        else:
            images, labels = render_array(n, seed=seed, split="test", size=spec.input_size, variant=shift,
                                          progress=progress)
        pools[shift] = (*predict_top(model, spec, images), labels)
    return pools


def event_from(pool: tuple[np.ndarray, np.ndarray], i: int, endpoint: str, t: float, payload: InputPayload,
               names: tuple[str, ...] | None = None) -> InferenceEvent:
    ids, probs = pool[0], pool[1]
    preds = [Prediction(class_id=int(c), label=names[int(c)] if names else str(int(c)), probability=float(p))
             for c, p in zip(ids[i], probs[i])]
    return InferenceEvent(endpoint=endpoint, variant="AllTraffic", model_version="shipped", input=payload,
                          output=InferenceOutput(predictions=preds, model_version="shipped"), latency_ms=1.0,
                          time=datetime.fromtimestamp(t, timezone.utc))


def stream(pools, plan: list[tuple[str, int]], endpoint: str, start_ts: float, rate_per_s: float,
           payload: InputPayload, seed: int = 0, attacked_share: float = 0.96) -> list[InferenceEvent]:
    """Events for a plan such as ``[("clean", 2000), ("attacked", 300)]``, ``rate_per_s`` apart
    in event time. "attacked" mixes ``attacked_share`` attacked requests with clean ones."""
    rng = np.random.default_rng(seed)
    out, t = [], start_ts
    for shift, n in plan:
        for _ in range(n):
            kind = shift
            if shift == "attacked" and rng.random() >= attacked_share:
                kind = "clean"
            pool = pools[kind]
            out.append(event_from(pool, int(rng.integers(len(pool[0]))), endpoint, t, payload))
            t += 1.0 / rate_per_s
    return out
