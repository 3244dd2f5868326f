"""The served model's facts in the object store, for the services that never load its weights.

The inference service publishes the manifest of the model it loaded at
``models/{endpoint}/manifest.json`` (``publish_manifest``; ``publish_when_possible`` at start, so
that a store briefly away never stops inference from serving). The monitor, ``baseline suggest
--capture``, ``monitor job`` and the dashboard read it (``read_published``) unless
``SIGNWATCH_MODEL_PATH`` names the model: they count and label that model's classes, never
``ModelSpec()``'s defaults (which describe the shipped GTSRB model only).

``ModelFacts`` is how a long-running reader waits for the manifest (a monitor started before
inference) and notices a new one (a new model version), on a clock, without ever blocking on it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from signwatch.model.core import ModelSpec
from signwatch.ports.store import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)


def published_key(endpoint: str) -> str:
    return f"models/{endpoint}/manifest.json"


def publish_manifest(store: ObjectStore, endpoint: str, model: ModelSpec | dict) -> str:
    """Write the manifest of the model ``endpoint`` serves (a spec, or a whole manifest with the
    weights' sha256) where the other services read it; returns its URI."""
    manifest = dict(model.manifest() if isinstance(model, ModelSpec) else model)
    ModelSpec.from_manifest(manifest)  # never publish what no reader could use
    manifest["published_at"] = datetime.now(timezone.utc).isoformat()
    return store.put(published_key(endpoint), (json.dumps(manifest, indent=2) + "\n").encode(), "application/json")


def read_published(store: ObjectStore, endpoint: str) -> ModelSpec | None:
    """The served model's facts, or None when no inference service published them yet.
    A manifest that is there but not usable is a ``ValueError`` (never taken for absent)."""
    try:
        raw = store.get(published_key(endpoint))
    except (ObjectNotFound, KeyError):
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{published_key(endpoint)} is not JSON: {exc}") from None
    return ModelSpec.from_manifest(meta)


def publish_when_possible(store: ObjectStore, endpoint: str, model: ModelSpec | dict,
                          first_retry_s: float = 1.0, max_retry_s: float = 60.0) -> threading.Thread | None:
    """``publish_manifest`` now; if the store is away, retried in a daemon thread with backoff
    (inference serves meanwhile; only the readers wait). Returns that thread, or None."""
    key = published_key(endpoint)
    try:
        publish_manifest(store, endpoint, model)
        log.info("published the served model's manifest at %s", key)
        return None
    except Exception as exc:  # noqa: BLE001 - the store is away: retry below, never fail the start
        log.error("could not publish the served model's manifest at %s (%s: %s): retrying in the "
                  "background; the monitor waits for it", key, type(exc).__name__, exc)

    def retry() -> None:
        delay = first_retry_s
        while True:
            time.sleep(delay)
            try:
                publish_manifest(store, endpoint, model)
                log.warning("published the served model's manifest at %s after a retry", key)
                return
            except Exception as exc:  # noqa: BLE001
                delay = min(delay * 2, max_retry_s)
                log.error("publishing %s failed again (%s: %s); next try in %.0fs", key, type(exc).__name__,
                          exc, delay)

    thread = threading.Thread(target=retry, name="publish-model-manifest", daemon=True)
    thread.start()
    return thread


def served_model_loader(settings, store: ObjectStore) -> tuple[Callable[[], ModelSpec | None], str, bool]:
    """(load, where, fixed) for these settings: the manifest of ``SIGNWATCH_MODEL_PATH`` when set
    (manifest only; a SageMaker tar.gz or .pth is imported once into the cache), else the one the
    inference service published for ``SIGNWATCH_ENDPOINT``. ``fixed``: a path does not change
    while the process runs (inference loads it once too), the store's manifest may."""
    if settings.model_path:
        from signwatch.model.core import load_spec
        from signwatch.model.remote import resolve_model_path

        return (lambda: load_spec(resolve_model_path(settings)),
                f"the manifest of SIGNWATCH_MODEL_PATH={settings.model_path}", True)
    return (lambda: read_published(store, settings.endpoint),
            f"{published_key(settings.endpoint)} in the object store (the inference service of endpoint "
            f"{settings.endpoint!r} publishes it once its model is loaded)", False)


def served_spec(settings, store: ObjectStore) -> ModelSpec:
    """The served model's facts now (for one-shot commands); ``LookupError`` saying where it
    looked when nothing is there, ``ValueError``/``FileNotFoundError`` when it is not usable."""
    load, where, _ = served_model_loader(settings, store)
    spec = load()
    if spec is None:
        raise LookupError(f"no model manifest: nothing at {where}; set SIGNWATCH_MODEL_PATH (or --weights) "
                          "to the served model")
    return spec


def same_model(a: ModelSpec | None, b: ModelSpec | None) -> bool:
    """Same facts for a reader of events: version, classes, input."""
    if a is None or b is None:
        return a is b
    return (a.version, a.class_names, a.input_size, a.architecture) == (b.version, b.class_names, b.input_size,
                                                                        b.architecture)


class ModelFacts:
    """The served model's facts for a long-running reader, asked for on each loop turn.

    ``poll()`` returns the facts, or None while they are not there: it tries again after a
    backoff (``first_retry_s`` doubling to ``max_retry_s``) and logs what it waits for (then
    once a minute). Once found they are re-read every ``reload_s`` (never when ``reload_s`` is
    None); a different manifest replaces them and bumps ``generation``. A read that fails (the
    store away, a manifest not usable) keeps what was known and is logged.
    """

    def __init__(self, load: Callable[[], ModelSpec | None], where: str, reload_s: float | None = 30.0,
                 first_retry_s: float = 0.5, max_retry_s: float = 10.0, clock=time.monotonic) -> None:
        self.load, self.where, self.reload_s = load, where, reload_s
        self.first_retry_s, self.max_retry_s, self.clock = first_retry_s, max_retry_s, clock
        self.spec: ModelSpec | None = None
        self.generation = 0
        self.problem: str | None = None      # why the last read gave nothing usable
        self._since = clock()
        self._next = self._since
        self._delay = first_retry_s
        self._logged_at: float | None = None

    @classmethod
    def fixed(cls, spec: ModelSpec, where: str = "given") -> "ModelFacts":
        facts = cls(lambda: spec, where, reload_s=None)
        facts.spec, facts.generation = spec, 1
        return facts

    @classmethod
    def for_settings(cls, settings, store: ObjectStore, reload_s: float = 30.0, **kw) -> "ModelFacts":
        load, where, fixed = served_model_loader(settings, store)
        return cls(load, where, None if fixed else reload_s, **kw)

    @property
    def waiting_for(self) -> str | None:
        """What is missing, in words (for readiness and logs); None once the facts are known."""
        if self.spec is not None:
            return None
        return f"the served model's facts: {self.where}" + (f" ({self.problem})" if self.problem else "")

    def poll(self) -> ModelSpec | None:
        now = self.clock()
        if now < self._next:
            return self.spec
        try:
            found, self.problem = self.load(), None
        except Exception as exc:  # noqa: BLE001 - a store away, a manifest not usable: try again later
            found, self.problem = None, f"{type(exc).__name__}: {exc}"
        if found is None:
            self._not_found(now)
            return self.spec
        if not same_model(found, self.spec):
            if self.spec is None:
                log.info("model facts from %s: version %s, %d classes, %d px", self.where, found.version,
                         found.num_classes, found.input_size)
            else:
                log.warning("the served model changed: version %s (%d classes) -> %s (%d classes)",
                            self.spec.version, self.spec.num_classes, found.version, found.num_classes)
            self.spec, self.generation = found, self.generation + 1
        self._next = now + self.reload_s if self.reload_s is not None else float("inf")
        return self.spec

    def _not_found(self, now: float) -> None:
        if self.spec is not None:  # known before: keep it, ask again at the next reload
            self._next = now + self.reload_s if self.reload_s is not None else float("inf")
            log.warning("re-reading the model facts from %s gave nothing (%s): keeping version %s",
                        self.where, self.problem or "not there", self.spec.version)
            return
        self._next = now + self._delay
        self._delay = min(self._delay * 2, self.max_retry_s)
        if self._logged_at is None or now - self._logged_at >= 60:
            self._logged_at = now
            log.warning("waiting for %s (%.0fs so far)", self.waiting_for, now - self._since)
