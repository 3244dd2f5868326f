"""``signwatch debugger``: work with what the run-time debugger recorded.

    signwatch debugger export --format smdebug s3://signwatch/tensors/signwatch ./smdebug-trial
    signwatch debugger export --format smdebug ./data/tensors/signwatch s3://bucket/trials/run1

TRIAL_URI and OUT take a folder, ``file://`` or ``s3://bucket/prefix[?endpoint=URL]`` (S3 endpoint and
credentials as for ``create_trial``: the SIGNWATCH_ settings, read once here, or boto3's own ``AWS_*`` chain). The export
is what ``smdebug.trials.create_trial(OUT)`` reads.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from .smdebug_export import export_smdebug
from .trial import StepUnavailable, TensorUnavailable, create_trial

debugger_app = typer.Typer(name="debugger", add_completion=False, no_args_is_help=True,
                           help="Recorded tensors: export them for other tools.")


class ExportFormat(str, Enum):
    smdebug = "smdebug"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@debugger_app.command("export")
def export(
    trial_uri: Annotated[str, typer.Argument(help="recorded steps: tensors/{endpoint} in a folder or s3://")],
    out: Annotated[str, typer.Argument(help="where to write: a folder or s3://bucket/prefix")],
    format: Annotated[ExportFormat, typer.Option("--format", help="output layout")] = ExportFormat.smdebug,  # noqa: A002
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Write a recorded trial in another tool's layout (smdebug: events, index, collections)."""
    from signwatch.config import settings_for_command

    try:
        settings = settings_for_command()
        trial = create_trial(trial_uri, settings=settings)
        summary = export_smdebug(trial, out, progress=not quiet, settings=settings)
    except (FileNotFoundError, ValueError, StepUnavailable, TensorUnavailable, TypeError) as exc:
        raise _fail(str(exc).strip("'\"")) from None
    except Exception as exc:  # noqa: BLE001 - store errors (S3 down, no credentials): one line, not a traceback
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    typer.echo(json.dumps({"format": format.value, **summary}))
