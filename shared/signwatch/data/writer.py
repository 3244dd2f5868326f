"""Writing a rendered data set in the GTSRB layout (what `signwatch data render` does).

Training and validation sets go to `OUT/Final_Training/Images/000NN/TTTTT_FFFFF.ppm` with one
`GT-000NN.csv` per class folder (the published training layout: image k of a class is frame
k % 30 of track k // 30); the test set goes to `OUT/Final_Test/Images/NNNNN.ppm` with a labelled
`GT-final_test.csv` beside the images. CSVs are semicolon-separated with the header
`Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`, the ROI being the sign's inclusive
bounding box. A `signwatch-render.json` beside the images records how they were made.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from signwatch.data.classes import NUM_CLASSES
from signwatch.data.gtsrb import CSV_COLUMNS, TEST_CSV
from signwatch.data.render import RENDER_VERSION, _progress, check_seed, check_size, check_split, iter_chunks
from signwatch.data.variants import check_variant

FRAMES_PER_TRACK = 30
MANIFEST = "signwatch-render.json"


@dataclass(frozen=True)
class RenderSummary:
    root: str  # the part's folder: OUT/Final_Training or OUT/Final_Test
    count: int
    split: str
    variant: str
    seed: int
    size: int
    csv_files: int


def training_name(index: int) -> tuple[int, str]:
    """(class folder, file name) of image `index` of a training/validation set."""
    class_id, k = index % NUM_CLASSES, index // NUM_CLASSES
    return class_id, f"{k // FRAMES_PER_TRACK:05d}_{k % FRAMES_PER_TRACK:05d}.ppm"


def write_gtsrb(
    out: str | Path,
    count: int,
    split: str = "train",
    seed: int = 0,
    size: int = 64,
    variant: str = "clean",
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> RenderSummary:
    """Renders images 0..count-1 of (seed, split, variant) into `out` in the GTSRB layout.

    Refuses to write into a non-empty `Final_Training` / `Final_Test` folder unless `overwrite`,
    which then deletes that one folder first (nothing else under `out`)."""
    if count < 1:
        raise ValueError(f"count must be at least 1; got {count}")
    seed, size, split, variant = check_seed(seed), check_size(size), check_split(split), check_variant(variant)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    part = out / ("Final_Test" if split == "test" else "Final_Training")
    if part.exists() and any(part.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{part} already holds files: choose another --out or pass --overwrite")
        shutil.rmtree(part)
    images_dir = part / "Images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[int, list[list[object]]] = {c: [] for c in range(NUM_CLASSES)} if split != "test" else {-1: []}
    bar = _progress(count, f"render {split}/{variant}", progress)
    for first, images, labels, rois in iter_chunks(count, seed, split, size, variant, workers):
        for i in range(len(images)):
            index, class_id = first + i, int(labels[i])
            if split == "test":
                folder, name, key = images_dir, f"{index:05d}.ppm", -1
            else:
                _, name = training_name(index)
                folder, key = images_dir / f"{class_id:05d}", class_id
                folder.mkdir(exist_ok=True)
            Image.fromarray(images[i]).save(folder / name)
            rows[key].append([name, size, size, *(int(v) for v in rois[i]), class_id])
        bar.update(len(images))
    bar.close()
    for key, entries in rows.items():
        if key == -1:
            path = images_dir / TEST_CSV
        else:
            (images_dir / f"{key:05d}").mkdir(exist_ok=True)
            path = images_dir / f"{key:05d}" / f"GT-{key:05d}.csv"
        lines = [";".join(CSV_COLUMNS)] + [";".join(str(v) for v in row) for row in entries]  # in index order
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = RenderSummary(str(part), count, split, variant, seed, size, len(rows))
    (images_dir / MANIFEST).write_text(
        json.dumps({"generator": "signwatch.data", "render_version": RENDER_VERSION, **asdict(summary)}, indent=2)
        + "\n"
    )
    return summary
