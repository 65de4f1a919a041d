"""The embedding adapter: the tensors of the image-embedding models
(model_repository/mobilenet_v2) and their outputs shaped into an embedding and classes."""

from __future__ import annotations

import numpy as np

from server.domain import Classification, EmbeddingResult, EmbedOptions, ModelRef
from server.triton.calls import Array, TritonCalls, scalar
from server.triton.tensors import IMAGE, IMAGE_SIZE, IMAGE_STATUS, ModelTensors, TensorSpec

TOP_K = "TOP_K"
EMBEDDING = "EMBEDDING"  # L2-normalised
CLASS_IDS = "CLASS_IDS"  # best first; -1 marks padding rows of a multi-image request
SCORES = "SCORES"
LABELS = "LABELS"


def tensors(dimension: int) -> ModelTensors:
    """The contract of an embedding model whose vectors have `dimension` values."""
    return ModelTensors(
        inputs=(TensorSpec(IMAGE, "BYTES", (1,)), TensorSpec(TOP_K, "INT32", (1,))),
        outputs=(
            TensorSpec(EMBEDDING, "FP32", (dimension,)),
            TensorSpec(CLASS_IDS, "INT32", (-1,)),
            TensorSpec(SCORES, "FP32", (-1,)),
            TensorSpec(LABELS, "BYTES", (-1,)),
            TensorSpec(IMAGE_SIZE, "INT32", (2,)),
            TensorSpec(IMAGE_STATUS, "INT32", (1,)),
        ),
    )


class TritonEmbedder:
    def __init__(self, calls: TritonCalls, dimension: int) -> None:
        self._calls = calls
        self._tensors = tensors(dimension)

    async def embed(self, content: bytes, options: EmbedOptions, request_id: str,
                    timeout_s: float | None) -> EmbeddingResult:
        outputs = await self._calls.infer(
            options.model, self._tensors,
            {IMAGE: scalar(content, np.object_),
             TOP_K: scalar(options.max_classifications, np.int32)},
            request_id, timeout_s)
        return _result(outputs, options, self._calls.served(options.model))


def _result(outputs: dict[str, Array], options: EmbedOptions, model: ModelRef
            ) -> EmbeddingResult:
    height, width = (int(v) for v in outputs[IMAGE_SIZE].reshape(-1)[:2])
    classes = tuple(
        Classification(label=_text(label), class_id=int(class_id), score=float(score))
        for class_id, score, label in zip(outputs[CLASS_IDS].reshape(-1),
                                          outputs[SCORES].reshape(-1),
                                          outputs[LABELS].reshape(-1), strict=True)
        if class_id >= 0
    )
    return EmbeddingResult(
        embedding=tuple(outputs[EMBEDDING].reshape(-1).tolist()),
        classifications=classes[: options.max_classifications],
        width=width, height=height, model=model)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
