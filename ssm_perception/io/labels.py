"""Label files: annotated 3D boxes of a recording, the format `import` writes and `evaluate` scores.

JSON lines, one box per line (UTF-8), in the bag's odom frame at the LiDAR stamps:

    {"stamp_ns": 1000000000, "id": "17", "class": "car", "x": 12.3, "y": -4.0, "z": 0.8,
     "l": 4.5, "w": 1.9, "h": 1.6, "yaw": 0.12}

- stamp_ns: the LiDAR scan stamp the box was annotated on (integer nanoseconds, the PointCloud2
  header stamp in the bag); id: the object's identity across frames (string); class: car, truck,
  cyclist, pedestrian or other (our class numbers 1, 2, 3, 4, 0; io/track_fields.py); x, y, z: box centre in
  odom [m]; l, w, h: size along the box's x, y, z [m]; yaw: heading about odom z [rad].
- optional: "num_points" (LiDAR returns inside the box, where the dataset gives it).
`import` writes it as labels.jsonl inside the bag directory (rosbag2 tools ignore extra files).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

LABEL_FILE = "labels.jsonl"
CLASSES = {"other": 0, "car": 1, "truck": 2, "cyclist": 3, "pedestrian": 4}


@dataclass
class LabelBox:
    stamp_ns: int
    id: str
    cls: str  # key of CLASSES; "class" in the file
    x: float
    y: float
    z: float
    l: float
    w: float
    h: float
    yaw: float
    num_points: int | None = None

    @property
    def cls_id(self) -> int:
        return CLASSES[self.cls]

    def to_json(self) -> str:
        d = asdict(self)
        d["class"] = d.pop("cls")
        if d["num_points"] is None:
            d.pop("num_points")
        return json.dumps(d)


class LabelFileError(ValueError):
    """A label file that cannot be read; the message names the file and line."""


def write_labels(path: str | Path, boxes) -> int:
    """Write boxes (LabelBox) as JSON lines; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for b in sorted(boxes, key=lambda b: (b.stamp_ns, b.id)):
            f.write(b.to_json() + "\n")
            n += 1
    return n


def read_labels(path: str | Path) -> dict[int, list[LabelBox]]:
    """{stamp_ns: [LabelBox, ...]} from a label file; LabelFileError naming the line on any defect."""
    path = Path(path)
    if path.is_dir():
        path = path / LABEL_FILE
    if not path.is_file():
        raise LabelFileError(f"label file not found: {path}")
    out: dict[int, list[LabelBox]] = defaultdict(list)
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            cls = str(d["class"])
            if cls not in CLASSES:
                raise ValueError(f"class {cls!r} is not one of {sorted(CLASSES)}")
            box = LabelBox(int(d["stamp_ns"]), str(d["id"]), cls,
                           *(float(d[k]) for k in ("x", "y", "z", "l", "w", "h", "yaw")),
                           num_points=None if d.get("num_points") is None else int(d["num_points"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise LabelFileError(f"{path}:{k}: {type(exc).__name__}: {exc}") from None
        out[box.stamp_ns].append(box)
    return dict(out)
