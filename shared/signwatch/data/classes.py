"""The 43 classes of the German Traffic Sign Recognition Benchmark (GTSRB), by class id."""

from __future__ import annotations

import operator

CLASS_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

NUM_CLASSES = 43
STOP = 14

assert len(CLASS_NAMES) == NUM_CLASSES

#: Class id -> the number on the sign, for the speed limits (and 6, the end of 80 km/h).
SPEED_LIMITS: dict[int, int] = {0: 20, 1: 30, 2: 50, 3: 60, 4: 70, 5: 80, 6: 80, 7: 100, 8: 120}

#: Images per class in GTSRB's training set (39,209 in all): the uneven mix of real road traffic
#: (speed limits common, "Speed limit (20km/h)" rare) that tests and benchmarks resample.
GTSRB_TRAIN_COUNTS: tuple[int, ...] = (
    210, 2220, 2250, 1410, 1980, 1860, 420, 1440, 1410, 1470, 2010, 1320, 2100, 2160, 780, 630, 420, 1110, 1200,
    210, 360, 330, 390, 510, 270, 1500, 600, 240, 540, 270, 450, 780, 240, 689, 420, 1200, 390, 210, 2070, 300,
    360, 240, 240)

assert len(GTSRB_TRAIN_COUNTS) == NUM_CLASSES

#: Pairs of classes that are mirror images of each other: never flip images horizontally
#: when augmenting, or these pairs swap labels.
MIRROR_PAIRS: tuple[tuple[int, int], ...] = ((19, 20), (33, 34), (36, 37), (38, 39))

#: Outline of each sign: "circle", "triangle" (point up), "inverted_triangle", "octagon", "diamond".
SHAPES: dict[int, str] = {
    **{c: "circle" for c in range(NUM_CLASSES)},
    **{c: "triangle" for c in (11, *range(18, 32))},
    12: "diamond",
    13: "inverted_triangle",
    14: "octagon",
}


def class_name(class_id: int) -> str:
    """The GTSRB name of a class id (0..42); ValueError for anything else."""
    return CLASS_NAMES[check_class_id(class_id)]


def check_class_id(class_id: object) -> int:
    """`class_id` as a plain int if it is an integer in 0..42 (numpy integers too), else ValueError."""
    try:
        value = operator.index(class_id)  # type: ignore[arg-type]
    except TypeError:
        value = None
    if value is None or isinstance(class_id, bool) or not 0 <= value < NUM_CLASSES:
        raise ValueError(f"class id must be an integer in 0..{NUM_CLASSES - 1}, got {class_id!r}")
    return value
