"""The `store` fixture: every contract test runs on each backend.

The embedded store runs always; OpenSearch runs when OPENSEARCH_URL names a cluster (for example
docker-compose's, http://127.0.0.1:4607), each test in its own index prefix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.store import StoreConfig, VectorStore, open_store

OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL")


@pytest.fixture(params=["embedded", "opensearch"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    if request.param == "embedded":
        opened = await open_store(StoreConfig(backend="embedded", path=tmp_path / "store"))
        yield opened
        await opened.close()
        return
    if not OPENSEARCH_URL:
        pytest.skip("OPENSEARCH_URL is not set (no OpenSearch cluster to test against)")
    prefix = f"vgtest-{uuid.uuid4().hex[:12]}"
    opened = await open_store(StoreConfig(backend="opensearch", url=OPENSEARCH_URL,
                                          index_prefix=prefix))  # fmt: skip
    yield opened
    from opensearchpy import AsyncOpenSearch

    admin = AsyncOpenSearch(hosts=[OPENSEARCH_URL])
    await admin.indices.delete(index=f"{prefix}-*")
    await admin.close()
    await opened.close()
