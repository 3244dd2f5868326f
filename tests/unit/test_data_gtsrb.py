"""The GTSRB reader on hand-made files in the published layout, and the writer's round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from signwatch.data import render_record, write_gtsrb
from signwatch.data.gtsrb import (
    GTSRBFormatError,
    GTSRBImages,
    find_annotation_files,
    iter_gtsrb,
    load_gtsrb,
    read_annotations,
)

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def _picture(w: int, h: int, roi: tuple[int, int, int, int], colour: tuple[int, int, int]) -> Image.Image:
    """Grey picture with the ROI (inclusive) painted in `colour`."""
    a = np.full((h, w, 3), 90, dtype=np.uint8)
    x1, y1, x2, y2 = roi
    a[y1 : y2 + 1, x1 : x2 + 1] = colour
    return Image.fromarray(a)


def _training_copy(root: Path) -> dict[str, tuple]:
    """A tiny training part: classes 0 and 14, pictures of different sizes, as the benchmark has."""
    items = {
        "00000/00000_00000.ppm": (30, 32, (5, 6, 24, 25), (255, 0, 0), 0),
        "00000/00000_00001.ppm": (41, 40, (4, 4, 36, 35), (0, 255, 0), 0),
        "00014/00003_00029.ppm": (25, 27, (5, 5, 19, 21), (0, 0, 255), 14),
    }
    images = root / "Final_Training" / "Images"
    for cls in ("00000", "00014"):
        (images / cls).mkdir(parents=True)
        rows = [HEADER]
        for name, (w, h, roi, colour, c) in items.items():
            if name.startswith(cls):
                _picture(w, h, roi, colour).save(images / name)
                rows.append(";".join(map(str, [name.split("/")[1], w, h, *roi, c])))
        (images / cls / f"GT-{cls}.csv").write_text("\r\n".join(rows) + "\r\n")
    return items


def test_reads_the_training_layout_with_roi_crop(tmp_path):
    items = _training_copy(tmp_path)
    records = read_annotations(tmp_path)
    assert [r.class_id for r in records] == [0, 0, 14]
    assert [(r.width, r.height, r.roi) for r in records] == [(w, h, roi) for w, h, roi, _, _ in items.values()]
    for (image, label), (_, _, roi, colour, c) in zip(iter_gtsrb(tmp_path, crop=True), items.values(), strict=True):
        x1, y1, x2, y2 = roi
        assert label == c and image.shape == (y2 - y1 + 1, x2 - x1 + 1, 3)
        assert (image == colour).all()  # exactly the ROI, nothing of the grey border
    whole = next(iter_gtsrb(tmp_path))[0]
    assert whole.shape == (32, 30, 3) and (whole == 90).any()
    images, labels = load_gtsrb(tmp_path, size=16, crop=True)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8 and labels.tolist() == [0, 0, 14]
    assert (images[2] == (0, 0, 255)).all()
    # the same copy, pointed at from inside
    assert len(read_annotations(tmp_path / "Final_Training" / "Images")) == 3
    assert len(read_annotations(tmp_path / "Final_Training" / "Images" / "00014" / "GT-00014.csv")) == 1
    ds = GTSRBImages(tmp_path, crop=True, size=8)
    assert len(ds) == 3 and ds[1][0].size == (8, 8) and ds[1][1] == 0


def test_reads_the_test_layout(tmp_path):
    images = tmp_path / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = [HEADER]
    for i, (cls, roi) in enumerate([(3, (2, 3, 12, 14)), (40, (1, 1, 15, 15))]):
        _picture(18, 17, roi, (200, 200, 0)).save(images / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;18;17;{';'.join(map(str, roi))};{cls}")
    (images / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    images_, labels = load_gtsrb(tmp_path, size=None, crop=False)
    assert images_.shape == (2, 17, 18, 3) and labels.tolist() == [3, 40]
    with pytest.raises(GTSRBFormatError, match="different sizes"):
        load_gtsrb(tmp_path, size=None, crop=True)


def _broken(tmp_path: Path, rows: list[str], image: bytes | None = b"") -> Path:
    folder = tmp_path / "Final_Training" / "Images" / "00001"
    folder.mkdir(parents=True)
    if image == b"":
        _picture(20, 20, (2, 2, 17, 17), (1, 2, 3)).save(folder / "a.ppm")
    elif image is not None:
        (folder / "a.ppm").write_bytes(image)
    (folder / "GT-00001.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "rows,image,message",
    [
        ([HEADER, "a.ppm;20;20;2;2;17;17;1"], None, "missing image"),
        ([HEADER, "a.ppm;20;20;2;2;17;17;1"], b"P6\n20 20\n255\nshort", "corrupt image"),
        ([HEADER, "a.ppm;20;20;2;2;20;17;1"], b"", "does not fit"),
        ([HEADER, "a.ppm;20;20;2;2;17;17;5"], b"", "folder of class 1"),
        ([HEADER, "a.ppm;20;20;2;2;17;17;77"], b"", "outside 0..42"),
        ([HEADER, "a.ppm;20;twenty;2;2;17;17;1"], b"", "malformed row"),
        ([HEADER, "a.ppm;24;20;2;2;17;17;1"], b"", "says 24x20"),
        (["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2"], b"", "lacks ClassId"),
        ([], b"", "empty"),
    ],
)
def test_broken_copies_give_clear_errors(tmp_path, rows, image, message):
    root = _broken(tmp_path, rows, image)
    with pytest.raises(GTSRBFormatError, match=message):
        load_gtsrb(root, size=8)


def test_layout_errors(tmp_path):
    with pytest.raises(GTSRBFormatError, match="does not exist"):
        read_annotations(tmp_path / "nowhere")
    with pytest.raises(GTSRBFormatError, match="no GTSRB annotations"):
        read_annotations(tmp_path)
    (tmp_path / "Final_Test" / "Images").mkdir(parents=True)
    (tmp_path / "Final_Test" / "Images" / "GT-final_test.test.csv").write_text("Filename;Width\n")
    with pytest.raises(GTSRBFormatError, match="carries no labels"):
        read_annotations(tmp_path)
    (tmp_path / "Final_Training" / "Images" / "00002").mkdir(parents=True)
    with pytest.raises(GTSRBFormatError, match="no GT-00002.csv"):
        read_annotations(tmp_path)
    with pytest.raises(ValueError):
        find_annotation_files(tmp_path, part="both")


def test_writer_round_trips_through_the_reader(tmp_path):
    summary = write_gtsrb(tmp_path, 50, split="train", seed=6, progress=False)
    assert summary.count == 50 and Path(summary.root) == tmp_path / "Final_Training"
    images_dir = tmp_path / "Final_Training" / "Images"
    assert sorted(p.name for p in images_dir.iterdir() if p.is_dir()) == [f"{c:05d}" for c in range(43)]
    first = (images_dir / "00000" / "GT-00000.csv").read_text().splitlines()
    assert (
        first[0] == HEADER and first[1].startswith("00000_00000.ppm;64;64;") and first[2].startswith("00000_00001.ppm")
    )
    records = read_annotations(tmp_path)
    assert len(records) == 50
    by_name = {(r.class_id, r.path.name): r for r in records}
    for index in (0, 7, 43, 49):
        pixels, label, roi = render_record(index, seed=6, split="train")
        record = by_name[(label, f"00000_{index // 43:05d}.ppm")]
        assert record.roi == roi
        from signwatch.data.gtsrb import load_image

        assert np.array_equal(load_image(record), pixels)  # PPM is lossless
    test = write_gtsrb(tmp_path, 5, split="test", variant="night", seed=6, size=32, progress=False)
    assert (Path(test.root) / "Images" / "GT-final_test.csv").is_file()
    with pytest.raises(GTSRBFormatError, match="both"):
        read_annotations(tmp_path)
    images, labels = load_gtsrb(tmp_path, part="test", size=None, crop=False)
    assert images.shape == (5, 32, 32, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(FileExistsError):
        write_gtsrb(tmp_path, 5, split="test", progress=False)
    write_gtsrb(tmp_path, 3, split="test", progress=False, overwrite=True)
    assert len(read_annotations(tmp_path, part="test")) == 3
    assert len(read_annotations(tmp_path, part="train")) == 50  # the other part is left alone
