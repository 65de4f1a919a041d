"""`python -m bench.store [--quick]`: the embedded vector store alone, no Triton, no server.

For 1280-d (image embeddings) and 128-d (face embeddings) clustered vectors: insert rate
(batched, and one fsynced upsert at a time), k=10 query latency p50/p95 through the async API,
and recall@10 against the exact answer, unfiltered, with a 50 % filter (HNSW over-fetch) and a
1 % filter (exact path); and what the check each k-NN makes for other processes' writes costs
when there are none (the change-marks lookup, timed alone). Writes bench/report/store.json and
the table bench/report/store.md (store-quick.* with --quick; `--render` rewrites the table from
the JSON alone).
Goal: p50 <= 5 ms at recall@10 >= 0.95, so that the store stays a small part of a search, whose
text or image embedding alone takes tens of milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.store import Filters, ImageRecord, Space
from server.store.embedded import EmbeddedOptions, EmbeddedStore
from server.store.embedded.schema import connect, transaction
from tests.contract.store_data import clustered, record

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = ROOT / "bench" / "report"
K = 10
BATCH = 500
SINGLE_UPSERTS = 200

Json = dict[str, Any]


def log(message: str) -> None:
    print(message, flush=True)


def exact_sets(
    unit_matrix: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    queries: npt.NDArray[np.float32],
) -> list[set[int]]:
    """The exact top-K row numbers among `rows` for each query, in one matrix product."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = unit_matrix[rows] @ q.T
    if rows.size <= K:
        return [{int(r) for r in rows} for _ in range(len(queries))]
    best = np.argpartition(-scores, K, axis=0)[:K]
    return [{int(rows[i]) for i in best[:, j]} for j in range(len(queries))]


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 1e6


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


async def run_space(n: int, dim: int, queries: int, seed: int) -> Json:
    rng = np.random.default_rng(seed)
    drawn = clustered(rng, n + queries, dim, clusters=max(20, n // 500))
    vectors, query_vectors = drawn[:n], drawn[n:]
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"img-{i:07d}" for i in range(n)]
    result: Json = {"n": n, "dim": dim, "queries": queries}
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=ROOT / "var") as tmp:
        options = EmbeddedOptions(dims={Space.IMAGES: dim, Space.FACES: 16})
        store = await EmbeddedStore.open(tmp, options)

        def rec(i: int) -> ImageRecord:
            meta = {"group": str(i % 100), "half": str(i % 2)}
            return record("bench", ids[i], vectors[i], metadata=meta)

        start = time.perf_counter()
        for lo in range(0, n, BATCH):
            await store.upsert_many([rec(i) for i in range(lo, min(n, lo + BATCH))])
            if lo and lo % (10 * BATCH * (n // 10_000 or 1)) == 0:
                log(f"  {dim}-d: {lo} inserted, {lo / (time.perf_counter() - start):.0f}/s")
        batched_s = time.perf_counter() - start
        result["insert_batched_per_s"] = n / batched_s
        result["insert_batched_s"] = batched_s

        # One upsert per commit, as single ingests arrive: each waits for its fsync.
        start = time.perf_counter()
        for i in range(SINGLE_UPSERTS):
            await store.upsert(rec(i))
        result["upsert_single_per_s"] = SINGLE_UPSERTS / (time.perf_counter() - start)

        all_rows = np.arange(n)
        cases = {
            "unfiltered": (Filters(), all_rows),
            "filtered_50pct": (Filters(metadata={"half": "1"}), all_rows[all_rows % 2 == 1]),
            "filtered_1pct": (Filters(metadata={"group": "7"}), all_rows[all_rows % 100 == 7]),
        }
        for name, (filters, rows) in cases.items():
            expected = exact_sets(unit, rows, query_vectors)
            await store.knn("bench", Space.IMAGES, query_vectors[0], K, filters)  # warm
            latencies: list[float] = []
            recall = 0
            for query, exact in zip(query_vectors, expected, strict=True):
                t0 = time.perf_counter()
                hits = await store.knn("bench", Space.IMAGES, query, K, filters)
                latencies.append((time.perf_counter() - t0) * 1000)
                got = {int(h.image_id[4:]) for h in hits}
                recall += len(got & exact)
            result[name] = {
                "matching": int(rows.size),
                "p50_ms": percentile(latencies, 50),
                "p95_ms": percentile(latencies, 95),
                "recall_at_10": recall / (K * len(query_vectors)),
            }
            log(f"  {dim}-d {name}: {result[name]}")

        result["catch_up_check_us"] = catch_up_check_us(store, Path(tmp))
        log(f"  {dim}-d catch-up check: {result['catch_up_check_us']:.1f} us per k-NN")

        start = time.perf_counter()
        await store.close()
        result["close_with_cache_save_s"] = time.perf_counter() - start
        start = time.perf_counter()
        store = await EmbeddedStore.open(tmp, options)
        result["reopen_s"] = time.perf_counter() - start
        result["reopen_cache"] = store.caches[Space.IMAGES].opened_as
        await store.close()
        result["disk_mb"] = directory_mb(Path(tmp))
    return result


def catch_up_check_us(store: EmbeddedStore, path: Path, calls: int = 5_000) -> float:
    """The per-k-NN check for other processes' writes when there were none, in microseconds:
    the cache compares its change marks with a read snapshot's (one lookup in SQLite)."""
    cache = store.caches[Space.IMAGES]
    conn = connect(path / "store.sqlite3")
    try:
        with transaction(conn):
            cache.catch_up(conn)
            start = time.perf_counter()
            for _ in range(calls):
                cache.catch_up(conn)
            elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return elapsed / calls * 1e6


async def main_async(quick: bool) -> Json:
    n = 10_000 if quick else 100_000
    queries = 100 if quick else 200
    report: Json = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "quick": quick,
        "k": K,
        "options": {"hnsw": "usearch f16, M=16, ef_add=128, ef_search=96", "exact_threshold": 2000},
        "spaces": [],
    }
    for dim, seed in ((1280, 1), (128, 2)):
        log(f"{n} x {dim}-d clustered vectors")
        report["spaces"].append(await run_space(n, dim, queries, seed))
    return report


_CASES = (("unfiltered", "unfiltered"), ("filtered_50pct", "50 % filter (HNSW over-fetch)"),
          ("filtered_1pct", "1 % filter (exact path)"))


def markdown(report: Json) -> str:
    """The report as the table that README and docstrings link to."""
    lines = [
        "# Embedded vector store",
        "",
        f"`python -m bench.store{' --quick' if report['quick'] else ''}`, {report['when']},"
        f" {report['machine']['cpus']} CPUs, Python {report['machine']['python']};"
        f" {report['options']['hnsw']}, exact threshold {report['options']['exact_threshold']}"
        f" rows; k={report['k']}, clustered vectors. Raw figures: the JSON beside this file.",
        "",
        "| vectors | case | matching | p50 ms | p95 ms | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for space in report["spaces"]:
        for key, name in _CASES:
            case = space[key]
            lines.append(
                f"| {space['n']:,} × {space['dim']}-d | {name} | {case['matching']:,} |"
                f" {case['p50_ms']:.2f} | {case['p95_ms']:.2f} | {case['recall_at_10']:.3f} |"
            )
    lines += [
        "",
        "| vectors | inserts/s batched | upserts/s one at a time | catch-up check µs per k-NN"
        " | reopen s (cache) | disk MB |",
        "|---|---|---|---|---|---|",
    ]
    for space in report["spaces"]:
        lines.append(
            f"| {space['n']:,} × {space['dim']}-d | {space['insert_batched_per_s']:.0f} |"
            f" {space['upsert_single_per_s']:.0f} | {space['catch_up_check_us']:.1f} |"
            f" {space['reopen_s']:.2f} ({space['reopen_cache']}) | {space['disk_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 000 vectors instead of 100 000")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the Markdown table from the JSON report")
    args = parser.parse_args()
    stem = "store-quick" if args.quick else "store"
    out = REPORT_DIR / f"{stem}.json"
    if args.render:
        report = json.loads(out.read_text())
    else:
        (ROOT / "var").mkdir(exist_ok=True)
        report = asyncio.run(main_async(args.quick))
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {out.relative_to(ROOT)}")
    table = REPORT_DIR / f"{stem}.md"
    table.write_text(markdown(report))
    log(f"wrote {table.relative_to(ROOT)}")
    for space in report["spaces"]:
        log(
            f"{space['n']} x {space['dim']}-d: insert"
            f" {space['insert_batched_per_s']:.0f}/s batched,"
            f" {space['upsert_single_per_s']:.0f}/s single"
        )
        for name in ("unfiltered", "filtered_50pct", "filtered_1pct"):
            case = space[name]
            log(
                f"  {name:15s} p50 {case['p50_ms']:.2f} ms  p95 {case['p95_ms']:.2f} ms"
                f"  recall@10 {case['recall_at_10']:.3f}"
            )
        log(f"  catch-up check   {space['catch_up_check_us']:.1f} us per k-NN")


if __name__ == "__main__":
    main()
