"""The dev stack's S3 has one door, the authenticated S3 gateway: its filer and volume server
refuse requests without a token the gateway minted, and every SeaweedFS listener but S3 binds
loopback only. Asked from this test's process, outside the stack's own."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import boto3
import pytest

from signwatch.stack.paths import StackPaths, read_state
from tests.conftest import PROJECT

pytestmark = pytest.mark.stack


def _status(method: str, url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def seaweed(stack, unique):
    config = read_state(StackPaths.of(PROJECT))
    s3 = boto3.client("s3", endpoint_url=stack["s3"]["endpoint"], aws_access_key_id=stack["s3"]["access_key"],
                      aws_secret_access_key=stack["s3"]["secret_key"], region_name="us-east-1")
    key = f"doors/{unique}/secret.json"
    s3.put_object(Bucket=stack["s3"]["bucket"], Key=key, Body=json.dumps({"secret": unique}).encode())
    return config, s3, stack["s3"]["bucket"], key


def test_the_filer_refuses_reads_listings_and_writes_without_credentials(seaweed):
    config, s3, bucket, key = seaweed
    filer = f"http://{config.host}:{config.seaweed_filer_port}"
    assert _status("GET", f"{filer}/buckets/{bucket}/{key}") == 401
    assert _status("GET", f"{filer}/buckets/{bucket}/") == 401
    assert _status("GET", f"{filer}/buckets/") == 401
    assert _status("PUT", f"{filer}/buckets/{bucket}/planted.txt", b"planted") == 401
    assert _status("POST", f"{filer}/buckets/{bucket}/planted.txt", b"planted") == 401
    names = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="planted").get("Contents", [])]
    assert names == []
    assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())  # the door still opens


def test_the_volume_server_refuses_writes_without_a_token(seaweed):
    config, *_ = seaweed
    master = f"http://{config.host}:{config.seaweed_master_port}"
    with urllib.request.urlopen(f"{master}/dir/assign", timeout=5) as response:
        assigned = json.loads(response.read())
    assert "auth" not in assigned  # the master hands out no write token to an anonymous caller
    volume = f"http://{assigned['url']}/{assigned['fid']}"
    boundary = "signwatchdoors"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n"
            f"planted\r\n--{boundary}--\r\n").encode()
    request = urllib.request.Request(volume, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def _outside_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (where another machine would connect)."""
    addresses = set()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the outward interface
            addresses.add(probe.getsockname()[0])
    except OSError:
        pass
    return sorted(a for a in addresses if not a.startswith("127."))


def test_no_seaweedfs_listener_but_s3_is_reachable_from_outside_loopback(seaweed):
    config, *_ = seaweed
    outside = _outside_addresses()
    if not outside:
        pytest.skip("this machine has no non-loopback address to ask from")
    for address in outside:
        for port in (config.seaweed_master_port, config.seaweed_volume_port, config.seaweed_filer_port):
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, port)) != 0, f"{address}:{port} is reachable"
