"""The scheduled job's map on a Dask LocalCluster of two worker processes, reading capture files
from the real S3 (each worker opens the store from the URL and credentials it is given): the
same counts, violations, statistics and folding as the whole-list job in one process, and the
CLI's ``--scheduler local`` run writes its run folder there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import boto3
import pytest

from signwatch.model.core import DEFAULT_WEIGHTS
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.capture_counts import finish
from signwatch.monitoring.job import run_counted
from signwatch.monitoring.job_workers import StoreSource, count_range
from signwatch.ports.security import Credentials, S3Credentials
from tests.conftest import PROJECT
from tests.unit import job_before_streaming as before
from tests.unit.test_job_streaming import NAMES, T0, _capture_files, _same, _tracks

pytestmark = pytest.mark.stack


def test_the_job_counts_s3_captures_on_a_dask_cluster_as_in_one_process(stack, unique):
    conf = stack["s3"]
    s3 = boto3.client("s3", endpoint_url=conf["endpoint"], aws_access_key_id=conf["access_key"],
                      aws_secret_access_key=conf["secret_key"], region_name="us-east-1")
    files = {f"daskjob-{unique}/{key}": data for key, data in _capture_files(seed=11, n_files=8, per_file=50).items()}
    for key, data in files.items():
        s3.put_object(Bucket=conf["bucket"], Key=key, Body=data)
    source = StoreSource(f"s3://{conf['bucket']}?endpoint={conf['endpoint']}",
                         Credentials(s3=S3Credentials(conf["access_key"], conf["secret_key"])))
    baseline = bl.load(*bl.shipped_files(), n_classes=len(NAMES))

    began = time.monotonic()
    partial = count_range(source, list(files), T0, None, hashes=True, workers=2, scheduler="local")
    on_dask = run_counted(finish(partial, len(NAMES), _tracks()), baseline, NAMES)
    took = time.monotonic() - began
    _same(before.run_job(list(files.values()), baseline, NAMES, T0, None, tracks=_tracks()), on_dask)
    assert on_dask.files == len(files) and on_dask.folded > 0 and took < 25

    env = os.environ | {"SIGNWATCH_S3_ACCESS_KEY": conf["access_key"], "SIGNWATCH_S3_SECRET_KEY": conf["secret_key"],
                        "SIGNWATCH_ENDPOINT": f"dask-{unique}", "SIGNWATCH_MODEL_PATH": str(DEFAULT_WEIGHTS)}
    out = f"daskjob-{unique}/monitoring"
    done = subprocess.run(
        [sys.executable, "-m", "signwatch_services.cli", "monitor", "job", "--scheduler", "local", "--workers", "2",
         "--capture", f"s3://{conf['bucket']}/daskjob-{unique}/datacapture?endpoint={conf['endpoint']}",
         "--start", "2026-12-01T10:00:00Z", "--end", "2026-12-01T11:00:00Z", "--output", out, "--json"],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 2), done.stderr
    summary = json.loads(done.stdout)
    one_hour = [data for key, data in files.items() if "/2026/12/01/10/" in key]
    w = before.run_job(one_hour, None, NAMES, T0.replace(hour=10, minute=0), T0.replace(hour=11, minute=0),
                       tracks=_tracks())[0]
    assert summary["total"] == w.total and summary["unreadable"] == w.unreadable
    body = s3.get_object(Bucket=conf["bucket"], Key=f"{summary['folder']}/statistics.json")["Body"].read()
    assert json.loads(body)["dataset"]["item_count"] == w.total
