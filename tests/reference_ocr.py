"""An independent in-process OCR run to check what Triton's ppocr_v6 returns: RapidOCR 3.10 itself
(the package whose PP-OCRv6 files Triton serves), with its default settings, on the same photo."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from rapidocr import RapidOCR
from rapidocr.utils.output import RapidOCROutput

from tests.images import PHOTOS


@dataclass(frozen=True)
class RefLine:
    text: str
    confidence: float
    polygon: tuple[float, ...]  # x, y of the 4 corners, clockwise from the top-left


@cache
def engine() -> RapidOCR:
    return RapidOCR(params={"Global.log_level": "error"})


def read(path: Path) -> list[RefLine]:
    """RapidOCR's lines for an image file, in its reading order."""
    result = engine()(str(path))
    # With detection, classification and recognition all on, a full result or an empty one.
    assert isinstance(result, RapidOCROutput), type(result)
    if not result.txts or result.boxes is None or result.scores is None:
        return []
    boxes = np.asarray(result.boxes, dtype=np.float32).reshape(len(result.txts), 8)
    return [
        RefLine(str(text), float(score), tuple(float(v) for v in box))
        for text, score, box in zip(result.txts, result.scores, boxes, strict=True)
    ]


@cache
def read_photo(name: str) -> tuple[RefLine, ...]:
    return tuple(read(PHOTOS / name))
