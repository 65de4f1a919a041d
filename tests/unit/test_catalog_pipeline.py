"""The model catalogue with a fake Triton catalogue: only allowed, task-tagged models are shown,
defaults marked, pinned versions checked, pages walked with tokens bound to their filter."""

from __future__ import annotations

import pytest

from server.domain import (
    InvalidArgumentError,
    ModelInfo,
    ModelNotFoundError,
    ModelVersion,
    Task,
)
from server.pipeline.catalog import CatalogPipeline
from server.pipeline.options import ModelChoice


class FakeCatalog:
    async def models(self) -> list[ModelInfo]:
        def info(name: str, task: Task, ready: bool = True) -> ModelInfo:
            return ModelInfo(name, task, (ModelVersion("2", ready), ModelVersion("1", True)), 0,
                             "ensemble")

        return [info("yolox_nano", Task.DETECTION), info("yolox_tiny", Task.DETECTION, False),
                info("hidden", Task.DETECTION), info("mobilenet_v2", Task.EMBEDDING),
                info("ppocr_v6", Task.OCR)]


CHOICES = {
    Task.DETECTION: ModelChoice(frozenset({"yolox_nano", "yolox_tiny"}), "yolox_nano"),
    Task.EMBEDDING: ModelChoice(frozenset({"mobilenet_v2"}), "mobilenet_v2"),
    Task.OCR: ModelChoice(frozenset({"ppocr_v6"}), "ppocr_v6"),
}


async def test_lists_allowed_models_by_task_then_name_with_defaults_marked() -> None:
    page = await CatalogPipeline(FakeCatalog(), CHOICES).list_models(None, 0, "")
    assert [(e.info.name, e.default_for_task) for e in page.entries] == [
        ("yolox_nano", True), ("yolox_tiny", False), ("mobilenet_v2", True), ("ppocr_v6", True)]
    assert page.next_page_token == ""


async def test_pages_walk_every_model_once_and_tokens_keep_their_filter() -> None:
    catalog = CatalogPipeline(FakeCatalog(), CHOICES)
    seen, token = [], ""
    while True:
        page = await catalog.list_models(None, 1, token)
        seen += [e.info.name for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["yolox_nano", "yolox_tiny", "mobilenet_v2", "ppocr_v6"]
    first = await catalog.list_models(Task.DETECTION, 1, "")
    with pytest.raises(InvalidArgumentError) as caught:
        await catalog.list_models(Task.OCR, 1, first.next_page_token)
    assert [v.path for v in caught.value.violations] == ["page_token"]
    with pytest.raises(InvalidArgumentError) as caught:
        await catalog.list_models(None, 1001, "not-a-token")
    assert [v.path for v in caught.value.violations] == ["page_size", "page_token"]


async def test_get_model_checks_name_and_pinned_version() -> None:
    catalog = CatalogPipeline(FakeCatalog(), CHOICES)
    entry = await catalog.get_model("yolox_tiny", "1")
    assert not entry.info.versions[0].ready and entry.info.ready
    with pytest.raises(ModelNotFoundError) as caught:
        await catalog.get_model("yolox_nano", "7")
    assert caught.value.path == "version"
    for hidden in ("hidden", "nope"):
        with pytest.raises(ModelNotFoundError) as caught:
            await catalog.get_model(hidden, "")
        assert caught.value.path == "name"
    with pytest.raises(InvalidArgumentError):
        await catalog.get_model("yolox_nano", "\u00b2")
