"""The data: the 43 GTSRB classes, a rendered look-alike data set, and a reader for real copies.

- `classes`: `CLASS_NAMES`, `NUM_CLASSES`, `STOP`, mirror pairs (never flip when augmenting).
- `render`: `render_sign`, `render_example`, `render_batch`, `render_array`, `SyntheticGTSRB`,
  deterministic for (seed, split, index); variants "clean", "snow", "night", "fog".
- `writer`: `write_gtsrb` (the GTSRB folder layout); `gtsrb`: `read_annotations`, `load_gtsrb`,
  `iter_gtsrb`, `GTSRBImages` for the real benchmark or a rendered copy.
- `sheet`: `contact_sheet`; `cli`: `data_app` (`signwatch data render|sheet|inspect`).
"""

from signwatch.data.classes import CLASS_NAMES, MIRROR_PAIRS, NUM_CLASSES, STOP, class_name
from signwatch.data.gtsrb import (
    GTSRBFormatError,
    GTSRBImages,
    GTSRBRecord,
    iter_gtsrb,
    load_gtsrb,
    load_image,
    read_annotations,
)
from signwatch.data.render import (
    RENDER_VERSION,
    SPLITS,
    SyntheticGTSRB,
    example_class,
    render_array,
    render_batch,
    render_example,
    render_record,
    render_sign,
)
from signwatch.data.variants import VARIANTS
from signwatch.data.writer import write_gtsrb

__all__ = [
    "CLASS_NAMES",
    "MIRROR_PAIRS",
    "NUM_CLASSES",
    "RENDER_VERSION",
    "SPLITS",
    "STOP",
    "VARIANTS",
    "GTSRBFormatError",
    "GTSRBImages",
    "GTSRBRecord",
    "SyntheticGTSRB",
    "class_name",
    "example_class",
    "iter_gtsrb",
    "load_gtsrb",
    "load_image",
    "read_annotations",
    "render_array",
    "render_batch",
    "render_example",
    "render_record",
    "render_sign",
    "write_gtsrb",
]
