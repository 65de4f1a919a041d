"""Greedy non-maximum suppression, for YOLOX's boxes (per class) and YuNet's faces."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Indices of the kept [x1, y1, x2, y2] boxes, best score first; a box goes when it
    overlaps a better kept one by more than iou_threshold."""
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        height = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = width * height
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def per_class_nms(
    boxes: FloatArray, scores: FloatArray, class_ids: npt.NDArray[np.int32], iou_threshold: float
) -> npt.NDArray[np.intp]:
    """NMS within each class only, so overlapping objects of different classes both survive."""
    kept = [np.zeros(0, dtype=np.intp)]
    for cls in np.unique(class_ids):
        members = np.flatnonzero(class_ids == cls)
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    indices = np.concatenate(kept)
    return indices[scores[indices].argsort(kind="stable")[::-1]]
