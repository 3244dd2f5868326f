"""Flagged requests on the dashboard (issue 20, item 3): each flagged event's triptych (input,
squeezed copy, difference, FullGrad maps of both) in the store, a bounded newest-first list of
them in the state store (once per event), the explain budget, and the page's routes."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from signwatch.dashboard import DashboardReader
from signwatch.flagged import IMAGES, FlaggedEntry, flagged_list_key, push_entries, read_entries, triptych_base
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from signwatch.saliency.render import overlay
from signwatch_services.explainer.dashboard import dashboard_router
from signwatch_services.explainer.flagged import ExplainBudget, FlaggedRecorder
from tests.unit.helpers import Clock

T0 = datetime(2026, 12, 8, 3, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def shipped():
    from signwatch.model import load_model

    return load_model()


@pytest.fixture(scope="module")
def renders(shipped):
    from signwatch.data.render import render_array

    _, spec = shipped
    images, _ = render_array(4, seed=7, split="test", size=spec.input_size, progress=False)
    return images


def _entry(event_id: str, minute: int, endpoint: str = "ep", **kw) -> FlaggedEntry:
    return FlaggedEntry(event_id=event_id, endpoint=endpoint, time=(T0 + timedelta(minutes=minute)).isoformat(),
                        score=3.0, threshold=1.2, fpr=0.01, signal="margin_drop", squeezer="shift:1",
                        predicted_class=14, label="Stop", probability=0.97, model_version="m", **kw)


def _decoded(raw: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


# -- the triptych ------------------------------------------------------------------------------------
def test_a_triptych_has_five_images_at_the_input_size_and_fullgrad_maps_of_both(shipped, renders, monkeypatch):
    import importlib

    from signwatch.model import normalize
    from signwatch.screening.triptych import render_triptychs

    fg = importlib.import_module("signwatch.saliency.fullgrad")  # the module; the package names the function
    model, spec = shipped
    calls = []
    real = fg.fullgrad_maps
    monkeypatch.setattr(fg, "fullgrad_maps", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    inputs = np.stack(renders[:2])
    squeezed = np.stack([np.roll(renders[0], 1, axis=1), renders[1]])  # the second: identical to its input
    out = render_triptychs(model, spec, inputs, squeezed)
    assert calls == [(4, 3, spec.input_size, spec.input_size)], "one FullGrad pass for inputs and copies"
    size = (spec.input_size, spec.input_size, 3)
    for t in out:
        assert all(getattr(t, role).shape == size and getattr(t, role).dtype == np.uint8 for role in IMAGES)
    assert out[0].difference_max > 0 and not (out[0].difference == 128).all()
    # an unflagged identical pair: no difference at all (grey), nothing amplified
    assert out[1].difference_max == 0 and (out[1].difference == 128).all() and out[1].difference_scale == 1.0
    # the maps are FullGrad's, each for the class read on that copy, drawn as the panels are
    import torch

    both = torch.from_numpy(np.concatenate([inputs, squeezed])).permute(0, 3, 1, 2).float() / 255
    reference = fg.fullgrad(model, normalize(both, spec), None)
    assert np.array_equal(out[0].input_fullgrad, np.asarray(overlay(inputs[0], reference.maps[0, 0])))
    assert np.array_equal(out[1].squeezed_fullgrad, np.asarray(overlay(squeezed[1], reference.maps[3, 0])))
    assert [t.input_class for t in out] == reference.target[:2].tolist()
    assert out[1].input_class == out[1].squeezed_class  # the same image reads the same
    assert render_triptychs(model, spec, inputs[:0], squeezed[:0]) == []
    with pytest.raises(ValueError):
        render_triptychs(model, spec, inputs, squeezed[:1])


def test_the_writer_puts_five_pngs_and_a_record_under_the_day_of_the_event(tmp_path, shipped, renders):
    from signwatch.screening.triptych import TriptychWriter, render_triptychs

    model, spec = shipped
    store = FileStore(tmp_path)
    [t] = render_triptychs(model, spec, np.stack(renders[:1]), np.stack([np.roll(renders[0], 1, axis=0)]))
    written = TriptychWriter(store, "screening").write(_entry("e1", 0), t, T0, spec.class_names)
    base = "screening/ep/2026/12/08/e1"
    assert base == triptych_base("screening", "ep", T0, "e1")
    assert written.images == {role: f"{base}/{role}.png" for role in IMAGES} and written.missing is None
    for key in written.images.values():
        assert _decoded(store.get(key)).shape == (spec.input_size, spec.input_size, 3)
    record = json.loads(store.get(written.record))
    assert record["event_id"] == "e1" and record["threshold"] == 1.2 and record["squeezer"] == "shift:1"
    assert record["difference_scale"] == t.difference_scale and "amplified" in record["difference"]
    assert record["squeezed_label"] == spec.class_names[t.squeezed_class]


# -- the bounded list ----------------------------------------------------------------------------------
def test_the_list_is_capped_newest_first_and_a_replay_adds_nothing(tmp_path):
    state, store = MemoryState(), FileStore(tmp_path)
    entries = []
    for i in range(5):  # each with one object, so eviction can be seen
        key = f"screening/ep/2026/12/08/e{i}/input.png"
        store.put(key, b"png", "image/png")
        entries.append(_entry(f"e{i}", i, images={"input": key}))
    assert len(push_entries(state, store, entries[:3], max_len=3)) == 3
    assert push_entries(state, store, entries[:3], max_len=3) == []  # the batch replayed
    assert [e.event_id for e in read_entries(state, "ep")] == ["e2", "e1", "e0"]
    assert len(push_entries(state, store, list(reversed(entries[3:])), max_len=3)) == 2  # any order in a batch
    assert [e.event_id for e in read_entries(state, "ep")] == ["e4", "e3", "e2"]
    assert len(state.get_list(flagged_list_key("ep"))) == 3
    assert not store.exists("screening/ep/2026/12/08/e0/input.png"), "pushed off the list: its images go"
    assert store.exists("screening/ep/2026/12/08/e2/input.png")
    assert push_entries(state, store, [entries[0]], max_len=3) == [], "replayed after eviction: still once"
    assert [e.event_id for e in read_entries(state, "ep", limit=2)] == ["e4", "e3"]


def test_reading_skips_foreign_entries_and_sorts_by_time():
    state = MemoryState()
    key = flagged_list_key("ep")
    push_entries(state, None, [_entry("late", 9)], 10)
    push_entries(state, None, [_entry("early", 1)], 10)  # listed later, happened earlier
    from signwatch.ports.state import Push

    state.apply_once("x", 60, [], [Push(key, "{not json", 10, 60)])
    state.apply_once("y", 60, [], [Push(key, _entry("other", 5, endpoint="other").to_json(), 10, 60)])
    assert [e.event_id for e in read_entries(state, "ep")] == ["late", "early"]


def test_the_budget_allows_n_in_any_minute():
    clock = Clock()
    budget = ExplainBudget(3, clock=clock)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    clock.t += 59.0
    assert not budget.take()
    clock.t += 1.0
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    assert not ExplainBudget(0).take()


# -- the recorder ------------------------------------------------------------------------------------
def _screened(event_id: str, minute: int):
    from signwatch.events import ScreeningEvent

    when = T0 + timedelta(minutes=minute)
    return ScreeningEvent(event_id=event_id, inference_time=when, endpoint="ep", variant="AllTraffic",
                          model_version="m", score=3.0, flagged=True, threshold=1.2, fpr=0.01, squeezer="down:2",
                          signal="margin_drop", predicted_class=14, probability=0.9)


def test_the_recorder_draws_within_the_budget_and_lists_the_rest(tmp_path, shipped, renders):
    import torch

    from signwatch.screening.triptych import TriptychWriter

    model, spec = shipped
    state, store = MemoryState(), FileStore(tmp_path)
    recorder = FlaggedRecorder(model, spec, state, TriptychWriter(store, "screening"), ExplainBudget(2), 100)
    pixels = torch.from_numpy(np.stack(renders[:3])).permute(0, 3, 1, 2).float() / 255
    squeezed = np.stack(renders[:3])
    assert recorder.record([_screened(f"e{i}", i) for i in range(3)], pixels, squeezed) == (2, 1)
    listed = read_entries(state, "ep")
    assert [e.event_id for e in listed] == ["e2", "e1", "e0"]
    drawn = {e.event_id: e for e in listed if e.missing is None}
    assert set(drawn) == {"e0", "e1"} and listed[0].missing == "budget" and listed[0].images == {}
    assert all(store.exists(k) for e in drawn.values() for k in e.images.values())
    assert drawn["e0"].label == spec.class_names[14] and drawn["e0"].difference_max == 0  # squeezed == input here


def test_a_drawing_that_fails_still_lists_the_requests(tmp_path, shipped, renders, monkeypatch):
    import torch

    import signwatch_services.explainer.flagged as flagged_module
    from signwatch.screening.triptych import TriptychWriter

    model, spec = shipped
    monkeypatch.setattr(flagged_module, "render_triptychs", lambda *a: 1 / 0)
    state = MemoryState()
    recorder = FlaggedRecorder(model, spec, state, TriptychWriter(FileStore(tmp_path), "screening"),
                               ExplainBudget(5), 100)
    pixels = torch.from_numpy(np.stack(renders[:1])).permute(0, 3, 1, 2).float() / 255
    assert recorder.record([_screened("e0", 0)], pixels, np.stack(renders[:1])) == (0, 1)
    assert read_entries(state, "ep")[0].missing == "error"


# -- the loop, end to end in memory ----------------------------------------------------------------
def test_the_screening_loop_lists_flagged_events_once_even_when_replayed(tmp_path, shipped):
    from prometheus_client import CollectorRegistry

    from signwatch.config import Settings
    from signwatch.monitoring.baseline import store_prefix
    from signwatch.ports.bus_memory import MemoryBus
    from signwatch.screening import ScreeningCalibration, stored
    from signwatch_services.explainer.screening import build_screening_loop
    from tests.unit.test_screening_services import _rendered_events

    model, spec = shipped
    store, state = FileStore(tmp_path), MemoryState()
    shipped_cal = ScreeningCalibration.from_json(json.loads(stored.SHIPPED.read_text()))
    stored.write_store(store, store_prefix("ep"), replace(shipped_cal, threshold=-1e9))  # every event flagged
    s = Settings(bus_url="memory://", store_url=tmp_path.as_uri(), state_url="memory://", endpoint="ep",
                 screening_explain_max_per_minute=4, screening_flagged_max=100)
    bus = MemoryBus(f"flagged-{tmp_path.name}")
    registry = CollectorRegistry()
    loop = build_screening_loop(s, bus, store, model, spec, registry, state=state)
    events = _rendered_events(spec, 6)
    for e in events + events[:3]:  # the first three again: a replay
        bus.publish("signwatch.inference", e.event_id, e.to_bytes())
    while loop.run_once():
        pass
    listed = read_entries(state, "ep")
    assert sorted(e.event_id for e in listed) == sorted(e.event_id for e in events), "each once"
    assert [e.time for e in listed] == sorted((e.time for e in listed), reverse=True)
    assert sum(e.missing is None for e in listed) == 4 and sum(e.missing == "budget" for e in listed) == 2
    count = lambda outcome: registry.get_sample_value(  # noqa: E731
        "signwatch_screening_events_total", {"endpoint": "ep", "outcome": outcome})
    assert count("triptych") == 4 and count("listed") == 2  # a replayed event is counted once


# -- the page --------------------------------------------------------------------------------------
def test_the_dashboard_lists_flagged_requests_newest_first_and_serves_only_their_images(tmp_path):
    state, store = MemoryState(), FileStore(tmp_path)
    old_key = "screening/ep/2026/12/08/old/input.png"
    store.put(old_key, b"\x89PNG\r\n\x1a\nfake", "image/png")
    store.put("screening/other/2026/12/08/x/input.png", b"png", "image/png")
    store.put("explanations/v/e.png", b"png", "image/png")
    push_entries(state, store, [_entry("old", 1, images={r: f"screening/ep/2026/12/08/old/{r}.png" for r in IMAGES}),
                                _entry("new", 2, missing="budget")], 100)
    reader = DashboardReader(state, store, "ep", "explanations", list_every_s=0, max_flagged=1)
    app = FastAPI()
    app.include_router(dashboard_router(reader))
    client = TestClient(app)
    page = client.get("/dashboard").text
    assert 'id="flagged"' in page and "dashboard/flagged/image" in page
    data = client.get("/dashboard/data").json()
    assert [f["event_id"] for f in data["flagged"]] == ["new"] and data["flagged_listed"] == 2
    full = client.get("/dashboard/flagged", params={"limit": 10}).json()
    assert [f["event_id"] for f in full["flagged"]] == ["new", "old"] and full["listed"] == 2
    assert full["flagged"][0]["missing"] == "budget" and full["flagged"][1]["threshold"] == 1.2
    img = client.get("/dashboard/flagged/image", params={"key": full["flagged"][1]["images"]["input"]})
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    for bad in ("screening/ep/2026/12/08/old/flagged.json", "screening/other/2026/12/08/x/input.png",
                "explanations/v/e.png", "screening/ep/../other/x.png", "screening/ep//x.png",
                "screening/ep/2026/12/08/old/difference.png", ""):
        r = client.get("/dashboard/flagged/image", params={"key": bad})
        assert r.status_code == 404, bad
    assert client.get("/dashboard/panel", params={"key": old_key}).status_code == 404, "not an explanation panel"


def test_an_event_flagged_in_inference_is_listed_with_its_triptych_and_its_own_score(tmp_path, shipped):
    from prometheus_client import CollectorRegistry

    from signwatch.config import Settings
    from signwatch.events import INFERENCE_SCHEMA_SCREENED, InferenceScreening
    from signwatch.monitoring.baseline import store_prefix
    from signwatch.ports.bus_memory import MemoryBus
    from signwatch.screening import ScreeningCalibration, stored
    from signwatch_services.explainer.screening import build_screening_loop
    from tests.unit.test_screening_services import _rendered_events

    model, spec = shipped
    store, state = FileStore(tmp_path), MemoryState()
    stored.write_store(store, store_prefix("ep"), ScreeningCalibration.from_json(json.loads(stored.SHIPPED.read_text())))
    s = Settings(bus_url="memory://", store_url=tmp_path.as_uri(), state_url="memory://", endpoint="ep")
    bus, registry = MemoryBus(f"flagged-pre-{tmp_path.name}"), CollectorRegistry()
    loop = build_screening_loop(s, bus, store, model, spec, registry, state=state)
    events = [e.model_copy(update={"schema_": INFERENCE_SCHEMA_SCREENED, "screening": InferenceScreening(
        score=9.5 if i == 0 else 0.1, flagged=i == 0, threshold=1.2, fpr=0.01, squeezer="shift:1",
        signal="margin_drop")}) for i, e in enumerate(_rendered_events(spec, 3))]
    for e in events:
        bus.publish("signwatch.inference", e.event_id, e.to_bytes())
    while loop.run_once():
        pass
    [listed] = read_entries(state, "ep")
    assert listed.event_id == events[0].event_id and listed.score == 9.5  # the score the client got
    assert listed.missing is None and all(store.exists(k) for k in listed.images.values())
