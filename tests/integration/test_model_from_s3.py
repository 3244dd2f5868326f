"""Weights from the real S3 (SeaweedFS): manifest beside them, sha256 checked, cached locally."""

from __future__ import annotations

import json

import boto3
import pytest
import torch
from pydantic import SecretStr

from signwatch.config import Settings
from signwatch.model import DEFAULT_WEIGHTS, load_model
from signwatch.model.importing import ModelImportError
from signwatch.model.remote import ModelFetchError, resolve_model_path

pytestmark = pytest.mark.stack


@pytest.fixture
def s3(stack):
    conf = stack["s3"]
    client = boto3.client("s3", endpoint_url=conf["endpoint"], aws_access_key_id=conf["access_key"],
                          aws_secret_access_key=conf["secret_key"], region_name="us-east-1")
    return client, conf


def _settings(conf, key, cache, with_endpoint=True):
    url = f"s3://{conf['bucket']}/{key}" + (f"?endpoint={conf['endpoint']}" if with_endpoint else "")
    return Settings(model_path=url, model_cache_dir=cache, s3_access_key=SecretStr(conf["access_key"]),
                    s3_secret_key=SecretStr(conf["secret_key"]),
                    store_url=f"s3://{conf['bucket']}?endpoint={conf['endpoint']}")


def test_weights_come_from_s3_once_and_match_the_shipped_model(s3, unique, tmp_path):
    client, conf = s3
    key = f"models/{unique}/signwatch-resnet18.safetensors"
    client.put_object(Bucket=conf["bucket"], Key=key, Body=DEFAULT_WEIGHTS.read_bytes())
    client.put_object(Bucket=conf["bucket"], Key=key.replace(".safetensors", ".json"),
                      Body=DEFAULT_WEIGHTS.with_suffix(".json").read_bytes())
    settings = _settings(conf, key, tmp_path / "cache", with_endpoint=False)  # endpoint of the store URL
    path = resolve_model_path(settings)
    sha = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["sha256"]
    assert path == tmp_path / "cache" / sha / "signwatch-resnet18.safetensors"
    remote_model, remote_spec = load_model(path)
    shipped, spec = load_model()
    x = torch.rand(2, 3, spec.input_size, spec.input_size)
    assert remote_spec == spec and torch.equal(remote_model(x), shipped(x))
    # Cached: with the object gone from S3, the next start still finds the weights.
    client.delete_object(Bucket=conf["bucket"], Key=key)
    assert resolve_model_path(settings) == path


def test_bare_safetensors_are_imported_damaged_and_swapped_weights_and_bad_urls_are_refused(s3, unique, tmp_path):
    client, conf = s3
    # No manifest beside it: a user's bare safetensors, imported at start (architecture inferred).
    bare = f"models/{unique}/bare.safetensors"
    client.put_object(Bucket=conf["bucket"], Key=bare, Body=DEFAULT_WEIGHTS.read_bytes())
    imported = resolve_model_path(_settings(conf, bare, tmp_path / "bare"))
    model, spec = load_model(imported)
    assert spec.architecture == "resnet18" and spec.num_classes == load_model()[1].num_classes
    # A damaged one is refused with the import's message, and nothing is cached.
    damaged = f"models/{unique}/damaged.safetensors"
    client.put_object(Bucket=conf["bucket"], Key=damaged, Body=DEFAULT_WEIGHTS.read_bytes()[:1000])
    with pytest.raises(ModelImportError, match="damaged safetensors"):
        resolve_model_path(_settings(conf, damaged, tmp_path / "damaged"))
    assert not list((tmp_path / "damaged").rglob("*.safetensors"))
    # With signwatch's manifest beside them, weights that are not the ones it names are refused.
    key = f"models/{unique}/w.safetensors"
    client.put_object(Bucket=conf["bucket"], Key=key, Body=DEFAULT_WEIGHTS.read_bytes()[:-10] + b"0" * 10)
    client.put_object(Bucket=conf["bucket"], Key=f"models/{unique}/w.json",
                      Body=DEFAULT_WEIGHTS.with_suffix(".json").read_bytes())
    with pytest.raises(ValueError, match="sha256"):
        resolve_model_path(_settings(conf, key, tmp_path / "swapped"))
    assert not list((tmp_path / "swapped").rglob("*.safetensors")), "nothing unverified is left in the cache"
    with pytest.raises((ModelFetchError, ModelImportError), match="needs a bucket and a key"):
        resolve_model_path(_settings(conf, "", tmp_path))
    assert resolve_model_path(Settings(model_path=None)) is None
