"""Per-class recall by range in the trainer's validation (ClassRecall): found, missed, misplaced
and misclassified objects, ranges binned from the grid targets."""

import numpy as np
import torch

from ssm_perception.config import PerceptionConfig
from ssm_perception.train.dataset import rasterize_objects
from ssm_perception.train.trainer import ClassRecall

CFG = PerceptionConfig()
# class, x, y, yaw, l, w, h, vx, vy: a car at 10 m, a bus-sized truck at 30 m, a pedestrian at 40 m
OBJECTS = np.array([[1, 10.0, 2.0, 0.3, 4.5, 1.9, 1.5, 0, 0], [2, -25.0, 17.0, 1.0, 12.0, 2.55, 3.2, 0, 0],
                    [4, 38.0, -26.0, 0.0, 0.6, 0.6, 1.75, 0, 0]])


def _heads(objects, shift=(0.0, 0.0), cls_map=None):
    """Heads that predict these objects exactly (optionally moved or with other classes)."""
    objs = np.array(objects, np.float64)
    objs[:, 1] += shift[0]
    objs[:, 2] += shift[1]
    if cls_map:
        objs[:, 0] = [cls_map.get(int(c), c) for c in objs[:, 0]]
    _, center, box, _ = rasterize_objects(objs, CFG.grid)
    logit = np.where(center >= 1.0, 8.0, np.where(center > 0.3, 0.0, -8.0))

    def t(a):
        return torch.from_numpy(np.asarray(a, np.float32))[None]

    return {"center_logit": t(logit), "box_offset": t(box[:2]), "box_size": t(box[2:5]), "box_yaw": t(box[5:7]),
            "velocity": t(np.zeros((2, *center.shape[1:]))), "occupancy_logit": t(np.full((1, *center.shape[1:]), 5.0))}


def _targets():
    _, center, box, _ = rasterize_objects(OBJECTS, CFG.grid)
    return np.round(center * 255).astype(np.uint8), box.astype(np.float16)


def test_recall_by_class_and_range():
    c, b = _targets()
    r = ClassRecall(CFG)
    r.add(_heads(OBJECTS), c, b)
    s = r.summary()
    assert s["bins_m"] == ["0-20", "20-35", "35-50", "50+"]
    cl = s["classes"]
    assert cl["car"]["0-20"] == {"recall": 1.0, "n": 1} and cl["car"]["20-35"]["n"] == 0
    assert cl["truck"]["20-35"]["recall"] == 1.0 and cl["pedestrian"]["35-50"]["recall"] == 1.0
    assert cl["cyclist"]["all"] == {"recall": None, "n": 0}
    # nothing detected: recall 0; moved by 3 m (> match radius) or wrong class: missed too
    for heads in (_heads(OBJECTS[:0]), _heads(OBJECTS, shift=(3.0, 0.0)), _heads(OBJECTS, cls_map={1: 3, 2: 1, 4: 3})):
        r = ClassRecall(CFG)
        r.add(heads, c, b)
        assert all(v["all"]["recall"] == 0.0 for k, v in r.summary()["classes"].items() if k != "cyclist")
    # one found of two frames
    r = ClassRecall(CFG)
    r.add(_heads(OBJECTS), c, b)
    r.add(_heads(OBJECTS[1:]), c, b)
    s = r.summary()["classes"]
    assert s["car"]["all"] == {"recall": 0.5, "n": 2} and s["truck"]["all"]["recall"] == 1.0
