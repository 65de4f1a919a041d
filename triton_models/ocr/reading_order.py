"""The lines of one image in reading order, mapped back to the decoded image, filtered by
confidence and packed into the response tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from triton_models.ocr.detection import PreparedImage

FloatArray = npt.NDArray[np.float32]

# Lines read with a lower mean character confidence are dropped.
MIN_TEXT_CONFIDENCE = 0.5
# Two lines share a row when their vertical extents overlap by this much of the shorter one.
ROW_OVERLAP = 0.5


@dataclass(frozen=True)
class TextLines:
    """One image's lines in reading order."""

    texts: list[str]
    confidences: FloatArray  # [k]
    polygons: FloatArray  # [k, 8]: x, y of top-left, top-right, bottom-right, bottom-left


EMPTY_LINES = TextLines([], np.zeros(0, np.float32), np.zeros((0, 8), np.float32))


def reading_order(boxes: FloatArray) -> list[int]:
    """Indices of [n, 4, 2] boxes in reading order: rows top to bottom, left to right in a row.

    A box joins the row being built when its vertical extent overlaps the row's by at least
    ROW_OVERLAP of the shorter of the two heights; rows are taken in order of their top edge.
    """
    tops, bottoms = boxes[:, :, 1].min(axis=1), boxes[:, :, 1].max(axis=1)
    rows: list[list[int]] = []
    row_top = row_bottom = 0.0
    for index in np.argsort(tops, kind="stable").tolist():
        top, bottom = float(tops[index]), float(bottoms[index])
        if rows:
            overlap = min(bottom, row_bottom) - max(top, row_top)
            shorter = min(bottom - top, row_bottom - row_top)
            if shorter > 0 and overlap >= ROW_OVERLAP * shorter:
                rows[-1].append(index)
                row_top, row_bottom = min(row_top, top), max(row_bottom, bottom)
                continue
        rows.append([index])
        row_top, row_bottom = top, bottom
    lefts = boxes[:, :, 0].min(axis=1)
    return [index for row in rows for index in sorted(row, key=lambda i: float(lefts[i]))]


def to_original(box: FloatArray, prepared: PreparedImage, height: int, width: int) -> FloatArray:
    """A box in prepared-image pixels as 8 floats in pixels of the decoded image."""
    mapped = box.astype(np.float32).copy()
    mapped[:, 1] -= prepared.top_padding
    mapped[:, 0] *= prepared.ratio_w
    mapped[:, 1] *= prepared.ratio_h
    mapped[:, 0] = np.clip(mapped[:, 0], 0, width)
    mapped[:, 1] = np.clip(mapped[:, 1], 0, height)
    return mapped.reshape(8)


def assemble_lines(
    readings: Sequence[tuple[str, float]], polygons: Sequence[FloatArray]
) -> TextLines:
    """Keep lines with text and enough confidence, in the given (reading) order."""
    kept = [
        (text, confidence, polygon)
        for (text, confidence), polygon in zip(readings, polygons, strict=True)
        if text.strip() and confidence >= MIN_TEXT_CONFIDENCE
    ]
    if not kept:
        return EMPTY_LINES
    return TextLines(
        texts=[text for text, _, _ in kept],
        confidences=np.asarray([confidence for _, confidence, _ in kept], dtype=np.float32),
        polygons=np.stack([polygon for _, _, polygon in kept]).astype(np.float32),
    )


def pack_lines(
    results: Sequence[TextLines],
) -> tuple[npt.NDArray[np.object_], FloatArray, FloatArray]:
    """One request's images as [n, k] texts, [n, k] confidences, [n, k, 8] polygons.

    k is the longest list; shorter ones are padded with "", 0 and zero polygons (a request
    usually carries one image, and then nothing is padded).
    """
    longest = max((len(result.texts) for result in results), default=0)
    texts = np.full((len(results), longest), b"", dtype=np.object_)
    confidences = np.zeros((len(results), longest), dtype=np.float32)
    polygons = np.zeros((len(results), longest, 8), dtype=np.float32)
    for row, result in enumerate(results):
        k = len(result.texts)
        texts[row, :k] = [text.encode() for text in result.texts]
        confidences[row, :k] = result.confidences
        polygons[row, :k] = result.polygons
    return texts, confidences, polygons
