"""``signwatch stack up|down|status|env``: the typer app ``stack_app``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import StackError
from .manager import KAFKA_TIMEOUT_S, down, format_endpoints, stack_env, status, up
from .paths import StackConfig

stack_app = typer.Typer(
    name="stack",
    help="Real Kafka, Redis and S3 (SeaweedFS) servers on loopback for development and tests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RootOption = Annotated[
    Optional[Path],
    typer.Option("--root", help="Project folder; the stack lives in ROOT/.stack (default: current directory)."),
]


def _port_help(what: str, env: str, default: int) -> str:
    return f"{what} port (env SIGNWATCH_STACK_{env}_PORT, default {default})."


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=1)


@stack_app.command("up")
def up_command(
    root: RootOption = None,
    kafka_port: Annotated[Optional[int], typer.Option(help=_port_help("Kafka broker", "KAFKA", 9092))] = None,
    kafka_controller_port: Annotated[
        Optional[int], typer.Option(help=_port_help("KRaft controller", "KAFKA_CONTROLLER", 9093))
    ] = None,
    redis_port: Annotated[Optional[int], typer.Option(help=_port_help("Redis", "REDIS", 6379))] = None,
    s3_port: Annotated[Optional[int], typer.Option(help=_port_help("S3", "S3", 8333))] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Kafka to answer.")] = KAFKA_TIMEOUT_S,
) -> None:
    """Install what is missing, start what is not running, wait until each server answers."""
    try:
        ports = {"kafka_port": kafka_port, "kafka_controller_port": kafka_controller_port,
                 "redis_port": redis_port, "s3_port": s3_port}
        config = StackConfig.from_env(**ports) if any(v is not None for v in ports.values()) else None
        st = up(root, config, kafka_timeout=timeout)
    except (StackError, ValueError) as exc:
        _fail(exc)
        return
    if not st.all_up:
        typer.echo("error: not every server answers; see the logs under .stack/", err=True)
        raise typer.Exit(code=1)


@stack_app.command("down")
def down_command(root: RootOption = None) -> None:
    """Stop the servers `up` started (only those)."""
    try:
        down(root)
    except StackError as exc:
        _fail(exc)


@stack_app.command("status")
def status_command(
    root: RootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Show the endpoints and whether each server answers (exit code 0 either way)."""
    try:
        st = status(root)
    except StackError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(st.model_dump()))
    else:
        typer.echo(format_endpoints(st))


@stack_app.command("env")
def env_command(root: RootOption = None) -> None:
    """Print `export NAME=value` lines for the services (eval "$(signwatch stack env)")."""
    for name, value in stack_env(root).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


def main() -> None:
    stack_app(prog_name="signwatch stack")
