"""Triton Python (BLS) model: PP-OCRv6 text reading, encoded image bytes in, text lines out.

Per Triton batch: decode every image, detect text with the DB network (`ppocr_v6_det`, images of
one input size together), cut out and rectify each line, turn upside-down lines with the direction
classifier (`ppocr_v6_cls`) and read all lines of all images with the CTC recogniser
(`ppocr_v6_rec`). The constants and steps follow RapidOCR 3.10's defaults, so both read the same
text; every numpy/OpenCV step is a module function that tests import without Triton.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pyclipper
import triton_python_backend_utils as pb_utils

# The decode budget is one file linked into each decoding step's folder (decode_budget.py). Triton
# loads model.py on its own, so its folder is put on the import path here, for tests alike.
sys.path.insert(0, str(Path(__file__).parent))
from cpu_steps import InProcessSteps, in_process_steps  # noqa: E402
from decode_budget import (  # noqa: E402
    STATUS_OK,
    STATUS_TOO_COMPLEX,
    STATUS_UNDECODABLE,
    jpeg_too_complex,
    png_chunks_broken,
)

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]

DET_MODEL, CLS_MODEL, REC_MODEL = "ppocr_v6_det", "ppocr_v6_cls", "ppocr_v6_rec"
NETWORK_INPUT = "x"
DET_OUTPUT = "fetch_name_0"
CLS_OUTPUT = "save_infer_model/scale_0.tmp_1"
REC_OUTPUT = "fetch_name_0"
# Each step's max_batch_size: a larger group is sent in several calls.
STEP_MAX_BATCH = 32

# Whole-image bounds before detection (sides rounded to multiples of 32).
MIN_SIDE_LEN, MAX_SIDE_LEN = 30, 2000
# Very flat or very low images get black bands above and below before detection.
PAD_MAX_WIDTH_HEIGHT_RATIO, PAD_MIN_HEIGHT = 8, 30
# The detector sees the image with its shorter side at least this long, sides multiples of 32.
DET_LIMIT_SIDE_LEN = 736
# The detector's activations grow with batch x pixels (measured on CPU: about 190 MB per
# megapixel, 1.5 GB at this cap): a bigger group of same-size images is split into calls.
DET_MAX_PIXELS_PER_CALL = 8_000_000
# DB post-processing: pixel threshold, mean box score, candidates, expansion, min box side.
DB_THRESHOLD, DB_BOX_THRESHOLD, DB_MAX_CANDIDATES = 0.3, 0.5, 1000
DB_UNCLIP_RATIO, DB_MIN_SIZE = 1.6, 3
# Direction classifier: 48x192 input, labels 0 and 180 degrees, rotate above this score.
CLS_HEIGHT, CLS_WIDTH, CLS_ROTATE_THRESHOLD = 48, 192, 0.9
# Recogniser: height 48, width that of the widest line of the call but at least 320.
REC_HEIGHT, REC_MIN_WIDTH = 48, 320
# Lines go to the recogniser sorted by aspect ratio in calls of 6, as PP-OCR sends them. The
# zero padding to a call's widest line shifts the reading of faint lines, so an image alone in
# its Triton batch reads exactly as in PP-OCR; when images share a batch, their lines share
# calls (fewer calls, but a faint line may read differently next to another image's lines).
REC_BATCH = 6
# Lines read with a lower mean character confidence are dropped.
MIN_TEXT_CONFIDENCE = 0.5
# Two lines share a row when their vertical extents overlap by this much of the shorter one.
ROW_OVERLAP = 0.5



ONNX_METADATA_FIELD = 14  # ModelProto.metadata_props
CHARACTER_KEY = "character"


class ImageDecodeError(ValueError):
    """The bytes are not an image OpenCV can decode."""


class ImageTooComplexError(ImageDecodeError):
    """The image exceeds the decode budget (jpeg_too_complex); it is not decoded."""


class StepError(RuntimeError):
    """A network step answered with an error."""


@dataclass(frozen=True)
class PreparedImage:
    """The image the detector and the line crops work on, and how to map back from it."""

    image: ImageArray  # bounded and padded BGR image
    top_padding: int
    ratio_h: float  # original pixels per prepared pixel
    ratio_w: float


@dataclass(frozen=True)
class TextLines:
    """One image's lines in reading order."""

    texts: list[str]
    confidences: FloatArray  # [k]
    polygons: FloatArray  # [k, 8]: x, y of top-left, top-right, bottom-right, bottom-left


EMPTY_LINES = TextLines([], np.zeros(0, np.float32), np.zeros((0, 8), np.float32))


# --- image ---------------------------------------------------------------------------------------


def decode_image(data: bytes) -> ImageArray:
    """Decode JPEG/PNG/WebP/BMP bytes to an HxWx3 BGR uint8 array (EXIF orientation applied)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageDecodeError("empty image")
    if jpeg_too_complex(data):
        raise ImageTooComplexError("too many JPEG scans")
    if png_chunks_broken(data):
        raise ImageDecodeError("a PNG chunk runs past the end of the data")
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ImageDecodeError("not a decodable image") from err
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise ImageDecodeError("not a decodable image")
    return image.astype(np.uint8, copy=False)


def round_to_32(value: float) -> int:
    return int(round(value / 32) * 32)


def bound_image(image: ImageArray) -> tuple[ImageArray, float, float]:
    """Shrink so the longer side is at most 2000, then grow so the shorter is at least 30.

    Each resize rounds both sides to multiples of 32 (at least 32); returns the image and the
    original pixels per resized pixel along y and x.
    """
    ratio_h = ratio_w = 1.0
    for limit, shrink in ((MAX_SIDE_LEN, True), (MIN_SIDE_LEN, False)):
        height, width = image.shape[:2]
        side = max(height, width) if shrink else min(height, width)
        if (side <= limit) if shrink else (side >= limit):
            continue
        scale = limit / side
        new_h = max(32, round_to_32(int(height * scale)))
        new_w = max(32, round_to_32(int(width * scale)))
        image = cv2.resize(image, (new_w, new_h))
        ratio_h, ratio_w = ratio_h * height / new_h, ratio_w * width / new_w
    return image, ratio_h, ratio_w


def pad_vertically(image: ImageArray) -> tuple[ImageArray, int]:
    """Black bands above and below a very flat or very low image; returns the top band height.

    The detector finds the text of a one-line strip more reliably with room above and below it.
    """
    height, width = image.shape[:2]
    if height > PAD_MIN_HEIGHT and width / height <= PAD_MAX_WIDTH_HEIGHT_RATIO:
        return image, 0
    target = max(int(width / PAD_MAX_WIDTH_HEIGHT_RATIO), PAD_MIN_HEIGHT) * 2
    band = int(abs(target - height) / 2)
    padded = cv2.copyMakeBorder(image, band, band, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return padded, band


def prepare_image(image: ImageArray) -> PreparedImage:
    bounded, ratio_h, ratio_w = bound_image(image)
    padded, top = pad_vertically(bounded)
    return PreparedImage(padded, top, ratio_h, ratio_w)


def det_input_size(height: int, width: int) -> tuple[int, int]:
    """The detector's (height, width): shorter side grown to 736 if below, multiples of 32."""
    scale = max(1.0, DET_LIMIT_SIDE_LEN / min(height, width))
    return max(32, round_to_32(int(height * scale))), max(32, round_to_32(int(width * scale)))


def normalise(image: ImageArray) -> FloatArray:
    """HWC BGR 0-255 to CHW float32 in [-1, 1], the scaling every PP-OCR network expects."""
    scaled = image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def det_input(image: ImageArray) -> FloatArray:
    height, width = det_input_size(*image.shape[:2])
    return normalise(cv2.resize(image, (width, height)))


# --- DB post-processing --------------------------------------------------------------------------


def mini_box(points: npt.NDArray[Any]) -> tuple[FloatArray, float]:
    """The minimum-area rectangle around points, corners from the top-left clockwise, and its
    shorter side."""
    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    corners = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = sorted(corners[:2], key=lambda p: p[1])
    right = sorted(corners[2:], key=lambda p: p[1])
    box = np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)
    return box, float(min(rect[1]))


def box_score(probabilities: FloatArray, box: FloatArray) -> float:
    """Mean probability inside the box polygon (the box's bounding rectangle clipped to the map)."""
    height, width = probabilities.shape
    x_min = int(np.clip(np.floor(box[:, 0].min()), 0, width - 1))
    x_max = int(np.clip(np.ceil(box[:, 0].max()), 0, width - 1))
    y_min = int(np.clip(np.floor(box[:, 1].min()), 0, height - 1))
    y_max = int(np.clip(np.ceil(box[:, 1].max()), 0, height - 1))
    mask = np.zeros((y_max - y_min + 1, x_max - x_min + 1), dtype=np.uint8)
    shifted = (box - np.array([x_min, y_min], dtype=np.float32)).astype(np.int32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2), 1)
    return float(cv2.mean(probabilities[y_min : y_max + 1, x_min : x_max + 1], mask)[0])


def unclip(box: FloatArray, ratio: float = DB_UNCLIP_RATIO) -> FloatArray:
    """Offset a box outwards by area * ratio / perimeter, with round corners.

    DB predicts shrunk text kernels; this is the inverse of the shrink it was trained with.
    Clipper does the offset, on whole-pixel coordinates as in PP-OCR: a closed-form rectangle
    offset lands up to a pixel away, and that pixel changes the reading of some lines.
    """
    area = abs(cv2.contourArea(box))
    perimeter = cv2.arcLength(box.reshape(-1, 1, 2), True)
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(area * ratio / perimeter if perimeter > 0 else 0.0)
    return np.asarray(grown, dtype=np.float32).reshape(-1, 2)


def order_clockwise(box: FloatArray) -> FloatArray:
    """Corners as top-left, top-right, bottom-right, bottom-left (split by x, then by y)."""
    by_x = box[np.argsort(box[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def db_boxes(
    probabilities: FloatArray, dest_height: int, dest_width: int
) -> tuple[FloatArray, FloatArray]:
    """Text boxes from the detector's [H, W] probability map, in pixels of a dest-size image.

    Threshold the map, dilate by 2x2 so touching characters join, take each contour's
    minimum-area rectangle, drop small or low-scoring ones, grow the rest back (unclip), scale
    to the destination, round to whole pixels and clip. Returns [n, 4, 2] boxes (clockwise from
    the top-left) and their [n] scores, in contour order.
    """
    height, width = probabilities.shape
    bitmap = cv2.dilate((probabilities > DB_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[:DB_MAX_CANDIDATES]:
        points, short_side = mini_box(contour)
        if short_side < DB_MIN_SIZE:
            continue
        score = box_score(probabilities, points)
        if score < DB_BOX_THRESHOLD:
            continue
        expanded = unclip(points)
        if len(expanded) < 3:
            continue
        grown, short_side = mini_box(expanded)
        if short_side < DB_MIN_SIZE + 2:
            continue
        grown[:, 0] = np.clip(np.round(grown[:, 0] / width * dest_width), 0, dest_width)
        grown[:, 1] = np.clip(np.round(grown[:, 1] / height * dest_height), 0, dest_height)
        box = order_clockwise(grown)
        box[:, 0] = np.clip(box[:, 0], 0, dest_width - 1)
        box[:, 1] = np.clip(box[:, 1], 0, dest_height - 1)
        if np.linalg.norm(box[0] - box[1]) < 4 or np.linalg.norm(box[0] - box[3]) < 4:
            continue
        boxes.append(box)
        scores.append(score)
    if not boxes:
        return np.zeros((0, 4, 2), np.float32), np.zeros(0, np.float32)
    return np.stack(boxes), np.asarray(scores, dtype=np.float32)


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


# --- line crops ----------------------------------------------------------------------------------


def crop_line(image: ImageArray, box: FloatArray) -> ImageArray:
    """Cut a (possibly rotated) quadrilateral out as an upright rectangle.

    The crop is the box's longer top/bottom edge wide and longer left/right edge high; a crop
    at least 1.5 times taller than wide is a vertical line, turned 90 degrees to lie flat.
    """
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    crop = cv2.warpPerspective(
        image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )
    if crop.shape[0] >= 1.5 * crop.shape[1]:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def resize_to_height(crop: ImageArray, height: int, max_width: int) -> ImageArray:
    """Scale a crop to the given height keeping its aspect ratio, at most max_width wide."""
    width = min(max_width, int(math.ceil(height * crop.shape[1] / crop.shape[0])))
    return cv2.resize(crop, (max(width, 1), height), interpolation=cv2.INTER_LINEAR)


def padded_batch(crops: Sequence[ImageArray], height: int, width: int) -> FloatArray:
    """Normalised crops resized to `height`, left-aligned on a zero canvas `width` wide."""
    batch = np.zeros((len(crops), 3, height, width), dtype=np.float32)
    for row, crop in enumerate(crops):
        resized = normalise(resize_to_height(crop, height, width))
        batch[row, :, :, : resized.shape[2]] = resized
    return batch


def cls_input(crops: Sequence[ImageArray]) -> FloatArray:
    return padded_batch(crops, CLS_HEIGHT, CLS_WIDTH)


def rec_width(crops: Sequence[ImageArray]) -> int:
    """The recogniser input width for a group: its widest crop at height 48, at least 320."""
    widest = max(crop.shape[1] / crop.shape[0] for crop in crops)
    return int(REC_HEIGHT * max(REC_MIN_WIDTH / REC_HEIGHT, widest))


def rec_input(crops: Sequence[ImageArray]) -> FloatArray:
    return padded_batch(crops, REC_HEIGHT, rec_width(crops))


def turn_upside_down_lines(crops: list[ImageArray], probabilities: FloatArray) -> list[ImageArray]:
    """Rotate by 180 degrees the crops the classifier calls upside down with enough confidence."""
    labels = probabilities.argmax(axis=1)
    return [
        cv2.rotate(crop, cv2.ROTATE_180)
        if labels[i] == 1 and probabilities[i, 1] > CLS_ROTATE_THRESHOLD
        else crop
        for i, crop in enumerate(crops)
    ]


# --- CTC decoding --------------------------------------------------------------------------------


def read_onnx_metadata(data: bytes) -> dict[str, str]:
    """The `metadata_props` of a serialised ONNX ModelProto, read straight off the protobuf.

    The recogniser carries its character set there. Reading the wire format directly keeps this
    step free of the onnx and onnxruntime packages, which the GPU container's Python lacks.
    """
    metadata: dict[str, str] = {}
    for field, value in protobuf_fields(data):
        if field == ONNX_METADATA_FIELD and isinstance(value, bytes):
            entry = {key: text for key, text in protobuf_fields(value) if isinstance(text, bytes)}
            metadata[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return metadata


def protobuf_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each top-level protobuf field; nested messages stay bytes."""
    position = 0

    def varint() -> int:
        nonlocal position
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while position < len(data):
        key = varint()
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            yield field, varint()
        elif wire_type == 2:
            length = varint()
            yield field, data[position : position + length]
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def ctc_charset(metadata: dict[str, str]) -> list[str]:
    """Index -> character: CTC blank at 0, the model's characters, then the space it appends."""
    return ["", *metadata[CHARACTER_KEY].splitlines(), " "]


def ctc_decode(
    indices: npt.NDArray[np.integer[Any]], probabilities: FloatArray, charset: Sequence[str]
) -> tuple[str, float]:
    """Greedy CTC: merge repeats, drop blanks; confidence = mean probability of kept steps."""
    keep = np.ones(len(indices), dtype=bool)
    keep[1:] = indices[1:] != indices[:-1]
    keep &= indices != 0
    text = "".join(charset[int(i)] for i in indices[keep])
    confidence = float(probabilities[keep].mean()) if keep.any() else 0.0
    return text, confidence


# --- assembling the result -----------------------------------------------------------------------


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


def chunks(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


# --- Triton --------------------------------------------------------------------------------------


# Set by initialize when the config runs the network steps in this process (configs/cpu.pbtxt).
_in_process: InProcessSteps | None = None


def run_step(model_name: str, batch: FloatArray, output_name: str) -> FloatArray:
    """One network step's output: a BLS call, or on the CPU configuration the step's ONNX file
    run here."""
    if _in_process is not None:
        return np.asarray(
            _in_process.run(model_name, {NETWORK_INPUT: batch}, [output_name])[output_name])
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        requested_output_names=[output_name],
        inputs=[pb_utils.Tensor(NETWORK_INPUT, batch)],
        # On GPU the steps' outputs would stay in device memory; the post-processing is numpy.
        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
    )
    response = request.exec()
    if response.has_error():
        raise StepError(f"{model_name}: {response.error().message()}")
    return np.asarray(pb_utils.get_output_tensor_by_name(response, output_name).as_numpy())


def detect(images: Sequence[PreparedImage]) -> list[FloatArray]:
    """Boxes per image in reading order; images whose detector inputs share a size go together,
    at most DET_MAX_PIXELS_PER_CALL (and STEP_MAX_BATCH images) per call."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, prepared in enumerate(images):
        groups.setdefault(det_input_size(*prepared.image.shape[:2]), []).append(index)
    boxes: list[FloatArray] = [np.zeros((0, 4, 2), np.float32)] * len(images)
    for (height, width), members in groups.items():
        per_call = min(STEP_MAX_BATCH, max(1, DET_MAX_PIXELS_PER_CALL // (height * width)))
        for part in chunks(members, per_call):
            batch = np.stack([det_input(images[i].image) for i in part])
            maps = run_step(DET_MODEL, batch, DET_OUTPUT)
            for index, probability_map in zip(part, maps, strict=True):
                found, _ = db_boxes(probability_map[0], *images[index].image.shape[:2])
                boxes[index] = found[reading_order(found)] if len(found) else found
    return boxes


def read_lines(crops: list[ImageArray], charset: Sequence[str]) -> list[tuple[str, float]]:
    """Turn upside-down crops over, then read them all (sorted by width, REC_BATCH per call)."""
    oriented: list[ImageArray] = []
    for part in chunks(range(len(crops)), STEP_MAX_BATCH):
        group = [crops[i] for i in part]
        oriented += turn_upside_down_lines(group, run_step(CLS_MODEL, cls_input(group), CLS_OUTPUT))
    by_width = sorted(range(len(crops)), key=lambda i: crops[i].shape[1] / crops[i].shape[0])
    readings: list[tuple[str, float]] = [("", 0.0)] * len(crops)
    for part in chunks(by_width, REC_BATCH):
        logits = run_step(REC_MODEL, rec_input([oriented[i] for i in part]), REC_OUTPUT)
        for index, steps in zip(part, logits, strict=True):
            readings[index] = ctc_decode(steps.argmax(axis=1), steps.max(axis=1), charset)
    return readings


def read_images(images: Sequence[ImageArray | None], charset: Sequence[str]) -> list[TextLines]:
    """Text lines of each decoded image; None (undecodable) gives no lines."""
    present = [(index, image) for index, image in enumerate(images) if image is not None]
    prepared = [prepare_image(image) for _, image in present]
    boxes = detect(prepared)
    crops = [
        crop_line(image.image, box)
        for image, found in zip(prepared, boxes, strict=True)
        for box in found
    ]
    readings = iter(read_lines(crops, charset) if crops else [])
    results = [EMPTY_LINES] * len(images)
    for (index, image), image_prepared, found in zip(present, prepared, boxes, strict=True):
        height, width = image.shape[:2]
        results[index] = assemble_lines(
            [next(readings) for _ in found],
            [to_original(box, image_prepared, height, width) for box in found],
        )
    return results


def decode_all(items: npt.NDArray[np.object_]) -> tuple[list[ImageArray | None], list[int]]:
    images: list[ImageArray | None] = []
    statuses = []
    for item in items.reshape(-1):
        try:
            images.append(decode_image(bytes(item)))
            statuses.append(STATUS_OK)
        except ImageDecodeError as err:
            images.append(None)
            too_complex = isinstance(err, ImageTooComplexError)
            statuses.append(STATUS_TOO_COMPLEX if too_complex else STATUS_UNDECODABLE)
    return images, statuses


class TritonPythonModel:
    """Reads every image of every request in the Triton batch through shared step calls."""

    def initialize(self, args: dict[str, str]) -> None:
        global _in_process
        _in_process = in_process_steps(json.loads(args["model_config"]))
        # The recogniser's file sits beside this model in the repository on CPU and on GPU.
        path = Path(args["model_repository"]).parent / REC_MODEL / "1" / "model.onnx"
        self.charset = ctc_charset(read_onnx_metadata(path.read_bytes()))

    def execute(self, requests: list[Any]) -> list[Any]:
        per_request, images, statuses = [], [], []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            decoded, codes = decode_all(items)
            per_request.append(len(decoded))
            images.extend(decoded)
            statuses.extend(codes)
        try:
            results = read_images(images, self.charset)
        except Exception as err:  # noqa: BLE001 - Triton needs one response per request, not a raise
            error = pb_utils.TritonError(f"OCR failed: {type(err).__name__}: {err}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for count in per_request:
            texts, confidences, polygons = pack_lines(results[start : start + count])
            sizes = [
                image.shape[:2] if image is not None else (0, 0)
                for image in images[start : start + count]
            ]
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("TEXTS", texts),
                        pb_utils.Tensor("CONFIDENCES", confidences),
                        pb_utils.Tensor("POLYGONS", polygons),
                        pb_utils.Tensor("IMAGE_SIZE", np.asarray(sizes, dtype=np.int32)),
                        pb_utils.Tensor(
                            "IMAGE_STATUS",
                            np.asarray(statuses[start : start + count], dtype=np.int32)[:, None],
                        ),
                    ]
                )
            )
            start += count
        return responses
