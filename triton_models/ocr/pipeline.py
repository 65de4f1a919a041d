"""PP-OCR text reading over every image of a Triton batch: detection (images of one input
size together), DB post-processing, direction classification and CTC recognition of all lines
together, then reading order. The networks are called through a `Steps` object: through Triton
on GPU, in this process on the CPU configuration."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from triton_models.ocr.db_postprocess import db_boxes
from triton_models.ocr.detection import (
    DET_MAX_SIDE_LEN,
    PreparedImage,
    det_input,
    det_input_size,
    prepare_image,
)
from triton_models.ocr.reading_order import (
    EMPTY_LINES,
    TextLines,
    assemble_lines,
    reading_order,
    to_original,
)
from triton_models.ocr.recognition import (
    cls_input,
    crop_line,
    ctc_decode,
    rec_input,
    turn_upside_down_lines,
)
from triton_models.steps import Steps

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]

DET_MODEL, CLS_MODEL, REC_MODEL = "ppocr_v6_det", "ppocr_v6_cls", "ppocr_v6_rec"
NETWORK_INPUT = "x"
DET_OUTPUT = "fetch_name_0"
CLS_OUTPUT = "save_infer_model/scale_0.tmp_1"
REC_OUTPUT = "fetch_name_0"
# Each step's max_batch_size: a larger group is sent in several calls.
STEP_MAX_BATCH = 32

# The detector's activations grow with batch x pixels (measured on CPU: about 190 MB per
# megapixel, 1.5 GB at this cap): a bigger group of same-size images is split into calls.
DET_MAX_PIXELS_PER_CALL = 8_000_000
# Lines go to the recogniser sorted by aspect ratio in calls of 6, as PP-OCR sends them. The
# zero padding to a call's widest line shifts the reading of faint lines, so an image alone in
# its Triton batch reads exactly as in PP-OCR; when images share a batch, their lines share
# calls (fewer calls, but a faint line may read differently next to another image's lines).
REC_BATCH = 6


def chunks(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


def run_step(steps: Steps, step: str, batch: FloatArray, output: str) -> FloatArray:
    """One network's output for a batch of inputs (all three networks take input `x`)."""
    return np.asarray(steps.run(step, {NETWORK_INPUT: batch}, [output])[output])


def detect(images: Sequence[PreparedImage], steps: Steps,
           max_side: int = DET_MAX_SIDE_LEN) -> list[FloatArray]:
    """Boxes per image in reading order; images whose detector inputs share a size go together,
    at most DET_MAX_PIXELS_PER_CALL (and STEP_MAX_BATCH images) per call."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, prepared in enumerate(images):
        height, width = prepared.image.shape[:2]
        groups.setdefault(det_input_size(height, width, max_side), []).append(index)
    boxes: list[FloatArray] = [np.zeros((0, 4, 2), np.float32)] * len(images)
    for (height, width), members in groups.items():
        per_call = min(STEP_MAX_BATCH, max(1, DET_MAX_PIXELS_PER_CALL // (height * width)))
        for part in chunks(members, per_call):
            batch = np.stack([det_input(images[i].image, max_side) for i in part])
            maps = run_step(steps, DET_MODEL, batch, DET_OUTPUT)
            for index, probability_map in zip(part, maps, strict=True):
                found, _ = db_boxes(probability_map[0], *images[index].image.shape[:2])
                boxes[index] = found[reading_order(found)] if len(found) else found
    return boxes


def read_lines(crops: list[ImageArray], charset: Sequence[str],
               steps: Steps) -> list[tuple[str, float]]:
    """Turn upside-down crops over, then read them all (sorted by width, REC_BATCH per call)."""
    oriented: list[ImageArray] = []
    for part in chunks(range(len(crops)), STEP_MAX_BATCH):
        group = [crops[i] for i in part]
        probabilities = run_step(steps, CLS_MODEL, cls_input(group), CLS_OUTPUT)
        oriented += turn_upside_down_lines(group, probabilities)
    by_width = sorted(range(len(crops)), key=lambda i: crops[i].shape[1] / crops[i].shape[0])
    readings: list[tuple[str, float]] = [("", 0.0)] * len(crops)
    for part in chunks(by_width, REC_BATCH):
        logits = run_step(steps, REC_MODEL, rec_input([oriented[i] for i in part]), REC_OUTPUT)
        for index, timesteps in zip(part, logits, strict=True):
            readings[index] = ctc_decode(timesteps.argmax(axis=1), timesteps.max(axis=1), charset)
    return readings


def read_images(images: Sequence[ImageArray | None], charset: Sequence[str], steps: Steps,
                det_max_side: int = DET_MAX_SIDE_LEN) -> list[TextLines]:
    """Text lines of each decoded image; None (undecodable) gives no lines."""
    present = [(index, image) for index, image in enumerate(images) if image is not None]
    prepared = [prepare_image(image) for _, image in present]
    boxes = detect(prepared, steps, det_max_side)
    crops = [
        crop_line(image.image, box)
        for image, found in zip(prepared, boxes, strict=True)
        for box in found
    ]
    readings = iter(read_lines(crops, charset, steps) if crops else [])
    results = [EMPTY_LINES] * len(images)
    for (index, image), image_prepared, found in zip(present, prepared, boxes, strict=True):
        height, width = image.shape[:2]
        results[index] = assemble_lines(
            [next(readings) for _ in found],
            [to_original(box, image_prepared, height, width) for box in found],
        )
    return results
