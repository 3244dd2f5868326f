"""``signwatch monitor job`` over capture files in the real S3: SageMaker's run folder, validated
against the JSON Schemas written from its docs, and the exit status a scheduler alerts on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

from signwatch.model.core import DEFAULT_WEIGHTS
from tests.conftest import PROJECT
from tests.schemas import validate
from tests.unit.test_monitoring_cli import _capture

pytestmark = pytest.mark.stack


class _S3Store:
    def __init__(self, s3, bucket):
        self.s3, self.bucket = s3, bucket

    def put(self, key, data, content_type="application/octet-stream"):
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)


def test_the_job_reads_s3_and_writes_its_run_folder_there(stack, unique):
    conf = stack["s3"]
    s3 = boto3.client("s3", endpoint_url=conf["endpoint"], aws_access_key_id=conf["access_key"],
                      aws_secret_access_key=conf["secret_key"], region_name="us-east-1")
    prefix = f"jobtest-{unique}/datacapture"
    _capture(_S3Store(s3, conf["bucket"]), prefix, stop_share=0.8)
    env = os.environ | {"SIGNWATCH_S3_ACCESS_KEY": conf["access_key"], "SIGNWATCH_S3_SECRET_KEY": conf["secret_key"],
                        "SIGNWATCH_ENDPOINT": f"job-{unique}",
                        "SIGNWATCH_MODEL_PATH": str(DEFAULT_WEIGHTS)}  # the class names from its manifest
    out = f"jobtest-{unique}/monitoring"
    done = subprocess.run(
        [sys.executable, "-m", "signwatch_services.cli", "monitor", "job",
         "--capture", f"s3://{conf['bucket']}/{prefix}/ep?endpoint={conf['endpoint']}",
         "--start", "2026-12-01T10:00:00Z", "--end", "2026-12-01T11:00:00Z", "--output", out, "--json"],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    summary = json.loads(done.stdout)
    assert summary["total"] == 300 and summary["folder"] == f"{out}/2026/12/01/10"
    get = lambda key: json.loads(s3.get_object(Bucket=conf["bucket"], Key=key)["Body"].read())  # noqa: E731
    violations = get(f"{summary['folder']}/constraint_violations.json")
    validate(violations, "constraint_violations")
    validate(get(f"{summary['folder']}/statistics.json"), "statistics")
    assert violations == {"violations": summary["violations"]} and summary["violations"]
