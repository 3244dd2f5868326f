"""Weights from the object store, as the reference's endpoint pulled its model archive from S3.

``SIGNWATCH_MODEL_PATH=s3://bucket/models/signwatch-resnet18.safetensors[?endpoint=URL]``: the
manifest beside the weights (``.json``) names their sha256; the weights are downloaded once
into ``model_cache_dir/<sha256>/``, checked against it, and moved into place atomically, so a
restart (or a second replica on the same volume) reuses them and a damaged or swapped file is
refused. Without ``?endpoint=`` the endpoint of ``SIGNWATCH_STORE_URL`` is used (the same S3).
A local path is returned unchanged; ``None`` means the weights shipped in the image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath
from collections.abc import Callable
from urllib.parse import urlparse

from signwatch.model.core import file_sha256 as _sha256
from signwatch.model.importing import ImportOptions, import_cached
from signwatch.ports import UnsupportedURL, open_store, s3_location
from signwatch.ports.security import Credentials

log = logging.getLogger(__name__)


class ModelFetchError(RuntimeError):
    pass


def store_url_and_key(model_url: str, fallback_store_url: str | None = None) -> tuple[str, str]:
    """(the store URL of the bucket, the key) of ``s3://bucket/key[?endpoint=URL]``."""
    try:
        store_url, key = s3_location(model_url, fallback_store_url)
    except UnsupportedURL as exc:
        raise ModelFetchError(f"model URL needs a bucket and a key: {exc}") from None
    if not key:
        raise ModelFetchError(f"model URL needs a bucket and a key: {model_url!r}")
    return store_url, key


def fetch_weights(model_url: str, cache_dir: Path, credentials: Credentials | None = None,
                  fallback_store_url: str | None = None) -> Path:
    """The local path of the weights behind ``model_url`` (with their manifest beside them)."""
    store_url, key = store_url_and_key(model_url, fallback_store_url)
    manifest_key = str(PurePosixPath(key).with_suffix(".json"))
    store = open_store(store_url, credentials)
    try:
        manifest_bytes = store.get(manifest_key)
    except KeyError as exc:
        raise FileNotFoundError(f"model manifest not found beside the weights: {manifest_key} in {store_url}") from exc
    manifest = json.loads(manifest_bytes)
    expected = manifest.get("sha256")
    if not expected:
        raise ModelFetchError(f"manifest {manifest_key} names no sha256: refusing unverifiable weights")
    folder = Path(cache_dir).expanduser() / expected
    weights = folder / PurePosixPath(key).name
    if weights.exists() and _sha256(weights) == expected:
        log.info("model %s: cached at %s", model_url, weights)
        return weights
    folder.mkdir(parents=True, exist_ok=True)
    try:
        data = store.get(key)
    except KeyError as exc:
        raise FileNotFoundError(f"model weights not found: {key} in {store_url}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"sha256 of {model_url} does not match its manifest")
    for target, body in ((weights.with_suffix(".json"), manifest_bytes), (weights, data)):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-")
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, target)  # atomic: a reader never sees half a file
    log.info("model %s: downloaded %d bytes to %s", model_url, len(data), weights)
    return weights


def s3_reader(settings) -> Callable[[str], bytes]:
    """``read(s3://bucket/key[?endpoint=URL]) -> bytes`` with the settings' credentials; without
    ``?endpoint=`` the endpoint of ``SIGNWATCH_STORE_URL`` (the same S3)."""
    def read(url: str) -> bytes:
        store_url, key = store_url_and_key(url, settings.store_url)
        return open_store(store_url, Credentials.from_settings(settings)).get(key)
    return read


def import_options(settings) -> ImportOptions:
    return ImportOptions(architecture=settings.model_architecture, input_size=settings.model_input_size,
                         labels=settings.model_labels, num_classes=settings.model_num_classes,
                         mean=settings.model_mean, std=settings.model_std, version=settings.model_version)


def _is_signwatch_weights(path: str, settings) -> bool:
    """A ``.safetensors`` with signwatch's manifest beside it (else it is imported first)."""
    if not urlparse(path).path.endswith(".safetensors"):  # s3:// URLs may end in ?endpoint=...
        return False
    if path.startswith("s3://"):
        store_url, key = store_url_and_key(path, settings.store_url)
        store = open_store(store_url, Credentials.from_settings(settings))
        return store.exists(str(PurePosixPath(key).with_suffix(".json")))
    return Path(path).with_suffix(".json").exists()


def resolve_model_path(settings) -> Path | None:
    """What ``load_model`` should open for these settings: a local path, or None (shipped).

    ``SIGNWATCH_MODEL_PATH`` may also name a SageMaker ``model.tar.gz``, a ``.pth``/``.pt`` state
    dict or a bare safetensors file (local, ``file://`` or ``s3://``): it is imported at start with
    ``SIGNWATCH_MODEL_ARCHITECTURE``, ``..._INPUT_SIZE``, ``..._LABELS`` (and the other
    ``SIGNWATCH_MODEL_*`` settings), once: the result is cached under ``model_cache_dir`` by the
    source's sha256 and those settings.
    """
    path = settings.model_path
    if path is None:
        return None
    path = str(path)
    if _is_signwatch_weights(path, settings):
        if path.startswith("s3://"):
            return fetch_weights(path, settings.model_cache_dir, Credentials.from_settings(settings),
                                 settings.store_url)
        return Path(path)
    return import_cached(path, import_options(settings), settings.model_cache_dir, s3_reader(settings))
