"""Reading the German Traffic Sign Recognition Benchmark in its published layout.

Training part: `Final_Training/Images/000NN/*.ppm`, one folder per class, each with its
`GT-000NN.csv`. Test part: the images with `GT-final_test.csv` beside them (the labelled CSV
that the benchmark published separately; put it into `Final_Test/Images/`). Both CSVs are
semicolon-separated with the header `Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`.
The region of interest is inclusive: the sign spans columns Roi.X1..Roi.X2 and rows
Roi.Y1..Roi.Y2 (the published images have a margin of about 10% around it).

`signwatch data render` writes the same layout, so everything here works on a rendered set too.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from signwatch.data.classes import NUM_CLASSES

CSV_COLUMNS: tuple[str, ...] = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
TEST_CSV = "GT-final_test.csv"
PARTS = ("auto", "train", "test")
_CLASS_DIR = re.compile(r"^\d{5}$")


class GTSRBFormatError(ValueError):
    """The folder is not in the GTSRB layout, or a CSV row or an image in it is broken."""


@dataclass(frozen=True)
class GTSRBRecord:
    """One annotated image: where it is, its size, the sign's box (inclusive) and its class."""

    path: Path
    width: int
    height: int
    roi: tuple[int, int, int, int]
    class_id: int
    source: str  # "csv-file:line", for error messages


def _training_csvs(root: Path) -> list[Path]:
    for base in (root / "Final_Training" / "Images", root / "Images", root):
        if base.is_dir():
            dirs = sorted(d for d in base.iterdir() if d.is_dir() and _CLASS_DIR.match(d.name))
            if dirs:
                missing = [d for d in dirs if not (d / f"GT-{d.name}.csv").is_file()]
                if missing:
                    raise GTSRBFormatError(f"class folder {missing[0]} has no GT-{missing[0].name}.csv")
                return [d / f"GT-{d.name}.csv" for d in dirs]
    return []


def _test_csv(root: Path) -> Path | None:
    for base in (root / "Final_Test" / "Images", root / "Images", root):
        if (base / TEST_CSV).is_file():
            return base / TEST_CSV
    return None


def find_annotation_files(root: str | Path, part: str = "auto") -> list[Path]:
    """The CSV files of a GTSRB copy. `root` may be the folder holding `Final_Training` /
    `Final_Test`, one of those, their `Images` folder, or a CSV file itself. `part` picks the
    training or the test part where a folder holds both ("auto" refuses to guess then)."""
    root = Path(root)
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
    if root.is_file():
        return [root]
    if not root.exists():
        raise GTSRBFormatError(f"{root} does not exist")
    train = _training_csvs(root) if part != "test" else []
    test = _test_csv(root) if part != "train" else None
    if train and test and part == "auto":
        raise GTSRBFormatError(
            f"{root} holds both the training and the test part: choose one with part='train' or 'test' "
            "(--part on the command line)"
        )
    if train:
        return train
    if test:
        return [test]
    if part != "train" and any(root.glob("**/GT-final_test.test.csv")):
        raise GTSRBFormatError(
            f"{root} has only GT-final_test.test.csv, which carries no labels: "
            f"put the labelled {TEST_CSV} (published separately) beside the test images"
        )
    wanted = {
        "auto": "Final_Training/Images/000NN/GT-000NN.csv or Final_Test/Images/" + TEST_CSV,
        "train": "Final_Training/Images/000NN/GT-000NN.csv",
        "test": "Final_Test/Images/" + TEST_CSV,
    }[part]
    raise GTSRBFormatError(f"no GTSRB annotations under {root}: expected {wanted}")


def read_csv(csv_path: str | Path) -> list[GTSRBRecord]:
    """The rows of one GTSRB CSV file, checked (image paths are relative to the CSV's folder)."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GTSRBFormatError(f"cannot read {csv_path}: {exc}") from exc
    rows = list(csv.reader(text.splitlines(), delimiter=";"))
    if not text.strip():
        raise GTSRBFormatError(f"{csv_path} is empty (expected the header {';'.join(CSV_COLUMNS)})")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        hint = " (a test CSV without labels? use the labelled GT-final_test.csv)" if missing == ["ClassId"] else ""
        raise GTSRBFormatError(f"{csv_path}: header lacks {', '.join(missing)}{hint}; got {';'.join(header)}")
    col = {name: header.index(name) for name in CSV_COLUMNS}
    folder_class = (
        int(csv_path.parent.name)
        if _CLASS_DIR.match(csv_path.parent.name) and csv_path.name.startswith("GT-0")
        else None
    )
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not v.strip() for v in row):
            continue
        where = f"{csv_path}:{line}"
        try:
            name = row[col["Filename"]].strip()
            w, h, x1, y1, x2, y2, cls = (int(row[col[c]]) for c in CSV_COLUMNS[1:])
        except (IndexError, ValueError) as exc:
            raise GTSRBFormatError(f"{where}: malformed row {';'.join(row)!r}") from exc
        if not name:
            raise GTSRBFormatError(f"{where}: empty Filename")
        if not 0 <= cls < NUM_CLASSES:
            raise GTSRBFormatError(f"{where}: ClassId {cls} is outside 0..{NUM_CLASSES - 1}")
        if folder_class is not None and cls != folder_class:
            raise GTSRBFormatError(f"{where}: ClassId {cls} in the folder of class {folder_class}")
        if w <= 0 or h <= 0 or not (0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h):
            raise GTSRBFormatError(f"{where}: ROI ({x1}, {y1}, {x2}, {y2}) does not fit a {w}x{h} image")
        out.append(GTSRBRecord(csv_path.parent / name, w, h, (x1, y1, x2, y2), cls, where))
    return out


def read_annotations(root: str | Path, part: str = "auto") -> list[GTSRBRecord]:
    """Every annotated image of a GTSRB copy (see `find_annotation_files` for `root`, `part`)."""
    return [r for f in find_annotation_files(root, part) for r in read_csv(f)]


def load_image(record: GTSRBRecord, size: int | None = None, crop: bool = False) -> np.ndarray:
    """The image as uint8 (H, W, 3): cropped to the ROI if `crop`, then resized to size x size."""
    try:
        with Image.open(record.path) as im:
            im.load()
            if im.size != (record.width, record.height):
                raise GTSRBFormatError(
                    f"{record.path} is {im.size[0]}x{im.size[1]}, but {record.source} says "
                    f"{record.width}x{record.height}"
                )
            rgb = im.convert("RGB")
    except FileNotFoundError as exc:
        raise GTSRBFormatError(f"missing image {record.path} (listed at {record.source})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, GTSRBFormatError):
            raise
        raise GTSRBFormatError(f"corrupt image {record.path} (listed at {record.source}): {exc}") from exc
    if crop:
        x1, y1, x2, y2 = record.roi
        rgb = rgb.crop((x1, y1, x2 + 1, y2 + 1))
    if size is not None:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(rgb)


def iter_gtsrb(
    root: str | Path, size: int | None = None, crop: bool = False, part: str = "auto", classes: set[int] | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Yields (uint8 image, class id) for each annotated image, in CSV order."""
    for record in read_annotations(root, part):
        if classes is None or record.class_id in classes:
            yield load_image(record, size, crop), record.class_id


def load_gtsrb(
    root: str | Path,
    size: int | None = 64,
    crop: bool = True,
    part: str = "auto",
    limit: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """All (or the first `limit`) images as (uint8 (N, H, W, 3), int64 (N,) labels).
    With `size=None` the images are kept as they are, which needs them all the same size."""
    records = read_annotations(root, part)[:limit]
    from tqdm.auto import tqdm

    images = [load_image(r, size, crop) for r in tqdm(records, desc="read GTSRB", unit="img", disable=not progress)]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise GTSRBFormatError(f"images of {len(shapes)} different sizes under {root}: pass a size to resize them")
    h, w = (size, size) if size is not None else (next(iter(shapes))[:2] if shapes else (0, 0))
    stacked = np.stack(images) if images else np.zeros((0, h, w, 3), dtype=np.uint8)
    return stacked, np.array([r.class_id for r in records], dtype=np.int64)


class GTSRBImages:
    """A GTSRB copy as a data set shaped like torchvision's `GTSRB`: item i is (PIL image, class)."""

    def __init__(
        self,
        root: str | Path,
        part: str = "auto",
        crop: bool = False,
        size: int | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
    ):
        self.records = read_annotations(root, part)
        self.crop, self.size, self.transform = crop, size, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        record = self.records[i]
        image: Any = Image.fromarray(load_image(record, self.size, self.crop))
        return (self.transform(image) if self.transform else image), record.class_id
