"""Label sets: ScanNet's 20 benchmark classes, S3DIS's 13 classes, SUN RGB-D's 10 detection classes, the ignore label.

Every dataset on disk stores semantic ids as indices into its label set (0..K-1) and
``IGNORE_LABEL`` (255) where a point or pixel is unlabeled or of a class outside the benchmark,
which is where ScanNet's "unannotated" (raw id 0) and its non-benchmark classes go.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_LABEL = 255
NO_INSTANCE = 0


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[str, ...]
    # Classes evaluated by instance segmentation and detection (ScanNet excludes wall and floor).
    thing_classes: tuple[str, ...]

    def index(self, name: str) -> int:
        return self.classes.index(name)

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(self.classes.index(c) for c in self.thing_classes)

    def to_json(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "thing_classes": list(self.thing_classes),
                "ignore_label": IGNORE_LABEL}


# NYU40 ids of ScanNet's 20 benchmark classes, in the benchmark's order (BenchmarkScripts' VALID_CLASS_IDS).
SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20 = LabelSet(
    name="scannet20",
    classes=("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
             "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
             "bathtub", "otherfurniture"),
    thing_classes=("cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
                   "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
                   "bathtub", "otherfurniture"),
)

S3DIS13 = LabelSet(
    name="s3dis13",
    classes=("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
             "bookcase", "board", "clutter"),
    thing_classes=("beam", "column", "window", "door", "table", "chair", "sofa", "bookcase", "board",
                   "clutter"),
)

# VoteNet's SUN RGB-D detection benchmark: its ten classes, in its order (sunrgbd_utils.type2class).
SUNRGBD10 = LabelSet(
    name="sunrgbd10",
    classes=("bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night_stand", "bookshelf", "bathtub"),
    thing_classes=("bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night_stand", "bookshelf",
                   "bathtub"),
)

LABEL_SETS = {ls.name: ls for ls in (SCANNET20, S3DIS13, SUNRGBD10)}


def nyu40_to_scannet20() -> dict[int, int]:
    """Map an NYU40 id to its ScanNet-20 index; ids not in the benchmark map to IGNORE_LABEL."""
    table = {i: IGNORE_LABEL for i in range(41)}
    for idx, nyu in enumerate(SCANNET20_NYU40_IDS):
        table[nyu] = idx
    return table
