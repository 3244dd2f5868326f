"""`signwatch data ...`: render the look-alike data set, draw its contact sheet, inspect a copy."""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from signwatch.data.render import MAX_SIZE, MIN_SIZE

data_app = typer.Typer(
    name="data",
    help="Render the look-alike GTSRB data set and read GTSRB copies.",
    no_args_is_help=True,
    add_completion=False,
)


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


class Variant(str, Enum):
    clean = "clean"
    snow = "snow"
    night = "night"
    fog = "fog"


class Part(str, Enum):
    auto = "auto"
    train = "train"
    test = "test"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


@data_app.command()
def render(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many images (classes cycle 0..42).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the GTSRB layout into.")],
    split: Annotated[Split, typer.Option(help="train/val -> Final_Training, test -> Final_Test.")] = Split.train,
    variant: Annotated[Variant, typer.Option(help="clean, or a drift variant.")] = Variant.clean,
    seed: Annotated[int, typer.Option(min=0, help="Data set seed; with the split it fixes every pixel.")] = 0,
    size: Annotated[int, typer.Option(min=MIN_SIZE, max=MAX_SIZE, help="Image side in pixels.")] = 64,
    workers: Annotated[int, typer.Option(min=1, help="Rendering processes.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing Final_Training/Final_Test folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Render COUNT look-alike images in the GTSRB layout (PPM images, GT-*.csv with ROIs)."""
    from signwatch.data.writer import write_gtsrb

    try:
        summary = write_gtsrb(out, count, split.value, seed, size, variant.value, workers, not quiet, overwrite)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"wrote {summary.count} {summary.split}/{summary.variant} images ({summary.size}px, seed "
        f"{summary.seed}) and {summary.csv_files} CSV file(s) under {summary.root}"
    )


@data_app.command()
def sheet(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("sheet.png"),
    samples: Annotated[int, typer.Option(min=1, max=16, help="Clean samples per class.")] = 4,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    size: Annotated[int, typer.Option(min=MIN_SIZE, max=MAX_SIZE)] = 64,
    variants: Annotated[bool, typer.Option(help="Add one row per drift variant.")] = True,
) -> None:
    """Draw a contact sheet: all 43 classes x SAMPLES clean images, plus snow, night and fog rows."""
    from signwatch.data.sheet import contact_sheet
    from signwatch.data.variants import VARIANTS

    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise _fail(f"--out must end in .png, .jpg or .webp; got {out.name}")
    if not out.parent.is_dir():
        raise _fail(f"folder {out.parent} does not exist")
    image = contact_sheet(samples, seed, size, VARIANTS[1:] if variants else ())
    image.save(out)
    typer.echo(f"wrote {out} ({image.width}x{image.height})")


@data_app.command()
def inspect(
    root: Annotated[Path, typer.Argument(help="A GTSRB copy (real or rendered), or one of its CSV files.")],
    part: Annotated[Part, typer.Option(help="Which part, where the folder holds both.")] = Part.auto,
    check_images: Annotated[bool, typer.Option(help="Open every image, not just the CSVs.")] = False,
) -> None:
    """Count the images per class in a GTSRB copy and check its annotations."""
    from signwatch.data.classes import CLASS_NAMES
    from signwatch.data.gtsrb import GTSRBFormatError, load_image, read_annotations

    try:
        records = read_annotations(root, part.value)
        if check_images:
            for record in records:
                load_image(record)
    except (GTSRBFormatError, ValueError) as exc:
        raise _fail(str(exc)) from None
    counts = Counter(r.class_id for r in records)
    widths = [r.width for r in records] or [0]
    typer.echo(f"{len(records)} images in {len(counts)} classes, {min(widths)}..{max(widths)} px wide")
    for class_id in sorted(counts):
        typer.echo(f"{class_id:3d} {counts[class_id]:6d}  {CLASS_NAMES[class_id]}")
