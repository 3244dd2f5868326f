"""``signwatch model import`` (and ``model show``): the user's model into signwatch's format.

    signwatch model import model.tar.gz --out models/mine.safetensors --labels labels.txt
    signwatch model import s3://bucket/job/output/model.tar.gz --out mine.safetensors --input-size 96
    signwatch model show models/mine.safetensors

Exit status 0 when imported, 2 with a one-line reason (several lines listing what does not fit)
when the source cannot be imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

model_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Import your model (SageMaker model.tar.gz, .pth state dict, safetensors).")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _triple(value: Optional[str], name: str) -> Optional[tuple[float, float, float]]:
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise _fail(f"--{name} takes three numbers R,G,B (e.g. 0.485,0.456,0.406), got {value!r}")
    return parts  # type: ignore[return-value]


def _settings():
    from signwatch.config import SettingsError, settings_for_command

    try:
        return settings_for_command()
    except SettingsError as exc:
        raise _fail(str(exc))


@model_app.command("import")
def import_cmd(
    source: str = typer.Argument(..., help="model.tar.gz, .pth/.pt or .safetensors: a path, file:// or s3:// URL"),
    out: Path = typer.Option(..., help="the safetensors to write (its manifest goes beside it, .json)"),
    architecture: Optional[str] = typer.Option(None, help="torchvision architecture (inferred from the weights)"),
    num_classes: Optional[int] = typer.Option(None, min=2, help="class count (inferred from the head)"),
    labels: Optional[str] = typer.Option(None, help="labels file: one per line, or JSON (list or id -> label)"),
    input_size: Optional[int] = typer.Option(None, min=8, max=1024, help="input size in pixels (default 224)"),
    mean: Optional[str] = typer.Option(None, help="normalisation mean R,G,B (default ImageNet's)"),
    std: Optional[str] = typer.Option(None, help="normalisation std R,G,B (default ImageNet's)"),
    version: Optional[str] = typer.Option(None, help="model version (default architecture-<source sha256>)"),
    member: Optional[str] = typer.Option(None, help="the weights' file inside a tar.gz (default the first .pth/.pt)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Import weights trained elsewhere: checks them, writes safetensors + manifest, runs a probe."""
    from signwatch.model.architectures import UnknownArchitecture
    from signwatch.model.importing import ImportOptions, ModelImportError, import_model, read_source
    from signwatch.model.remote import s3_reader

    if out.suffix != ".safetensors":
        raise _fail(f"--out must end in .safetensors, got {out}")
    if version is not None and not 1 <= len(version) <= 128:
        raise _fail("--version must be 1 to 128 characters")
    options = ImportOptions(architecture=architecture, num_classes=num_classes, labels=labels,
                            input_size=input_size, mean=_triple(mean, "mean"), std=_triple(std, "std"),
                            version=version, member=member)
    read_s3 = s3_reader(_settings()) if source.startswith("s3://") or (labels or "").startswith("s3://") else None
    try:
        summary = import_model(read_source(source, read_s3), out, options, read_s3)
    except (ModelImportError, UnknownArchitecture) as exc:
        raise _fail(str(exc))
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}")
    if as_json:
        typer.echo(json.dumps(summary))
        return
    probe = summary["probe"]
    typer.echo(f"imported {summary['source']['uri']}"
               + (f" (member {summary['source']['member']})" if summary["source"]["member"] else ""))
    typer.echo(f"  architecture  {summary['architecture']} ({summary['family']} family), "
               f"{summary['parameters']:,} parameters")
    typer.echo(f"  classes       {summary['num_classes']}: {', '.join(summary['labels'])}")
    typer.echo(f"  input         {summary['input_size']} px, mean {summary['mean']}, std {summary['std']}")
    typer.echo(f"  version       {summary['version']}")
    typer.echo(f"  FullGrad      {summary['fullgrad']} (completeness error on a probe "
               f"{probe['fullgrad_completeness_rel_error']:.1e})")
    typer.echo(f"  wrote         {summary['out']} (sha256 {summary['sha256'][:16]}...) and {summary['manifest']}")


@model_app.command("show")
def show_cmd(weights: Path = typer.Argument(..., help="signwatch safetensors (its manifest beside it)")) -> None:
    """Print a model's manifest: what the services will take as its facts."""
    from signwatch.model.core import load_manifest, load_spec

    try:
        load_spec(weights)
        typer.echo(json.dumps(load_manifest(weights), indent=2))
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc))
