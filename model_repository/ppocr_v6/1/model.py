"""Triton Python (BLS) model: PP-OCRv6 text reading, encoded image bytes in, text lines out
(triton_models.ocr). The networks (ppocr_v6_det, ppocr_v6_cls, ppocr_v6_rec) are called through
Triton on GPU (config.pbtxt) and run in this process on the CPU configuration (configs/cpu.pbtxt,
parameter steps_in_process): a step object chosen once in initialize. The character set is the
file tools/prepare_models.py writes beside the recogniser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_models.images import decode_all
from triton_models.ocr.detection import DET_MAX_SIDE_LEN
from triton_models.ocr.pipeline import REC_MODEL, read_images
from triton_models.ocr.reading_order import pack_lines
from triton_models.ocr.recognition import CHARACTERS_FILE, read_charset
from triton_models.serving import read_input
from triton_models.steps import parameter, steps_for


class TritonPythonModel:
    """Reads every image of every request in the Triton batch through shared step calls."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.steps = steps_for(args, config, pb_utils)
        self.det_max_side = int(parameter(config, "det_max_side_len", str(DET_MAX_SIDE_LEN)))
        # The recogniser's folder sits beside this model in the repository on CPU and on GPU.
        repository = Path(args["model_repository"]).parent
        self.charset = read_charset(repository / REC_MODEL / "1" / CHARACTERS_FILE)

    def execute(self, requests: list[Any]) -> list[Any]:
        per_request, images, statuses = [], [], []
        for request in requests:
            decoded, codes = decode_all(read_input(pb_utils, request, "IMAGE"))
            per_request.append(len(decoded))
            images.extend(decoded)
            statuses.extend(codes)
        try:
            results = read_images(images, self.charset, self.steps, self.det_max_side)
        except Exception as err:  # noqa: BLE001 - Triton needs one response per request, not a raise
            error = pb_utils.TritonError(f"OCR failed: {type(err).__name__}: {err}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for count in per_request:
            rows = slice(start, start + count)
            texts, confidences, polygons = pack_lines(results[rows])
            sizes = [image.shape[:2] if image is not None else (0, 0) for image in images[rows]]
            codes = np.asarray(statuses[rows], dtype=np.int32)[:, None]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("TEXTS", texts), pb_utils.Tensor("CONFIDENCES", confidences),
                pb_utils.Tensor("POLYGONS", polygons),
                pb_utils.Tensor("IMAGE_SIZE", np.asarray(sizes, dtype=np.int32)),
                pb_utils.Tensor("IMAGE_STATUS", codes)]))
            start += count
        return responses
