"""The k-NN query planner: which vectors to score exactly, and the exact ranking.

A k-NN ranks exactly. When few rows can match (a selective filter, a small tenant) they are all
candidates: their ids come from covering indexes, their cosines are first judged on the cache's
in-memory f16 vectors (within a known bound of the exact ones), and only the rows that this
bound cannot rule out of the best k are checked against the tenant and filters, read from
SQLite as float32 and scored exactly. Otherwise HNSW is over-fetched and its candidates are
re-checked and scored the same way; an over-fetch that comes up short falls back to the exact
path, so k hits come back whenever k matching vectors exist. Reading, checking and decoding
every matching row was most of a selective query's time (bench/store.py, 1 000 matching rows
of 100 000): hence the screening on the cache.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import dataclass

import numpy as np

from server.store.base import Filters, Vector
from server.store.embedded import candidates
from server.store.embedded.filters import Condition, condition_size, conditions
from server.store.embedded.hnsw import HnswCache

_log = logging.getLogger(__name__)

# Cosine scores are rounded to 6 decimals before ties fall to the id (see `rank`).
_ROUNDING = 1e-6
# The cache screens candidates only when there are this many times more than it keeps.
_SHORTLIST_FROM = 4


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """exact_threshold: a k-NN whose tenant and filters match at most this many vectors is
    answered exactly; max_fetch: the most HNSW candidates an over-fetch asks for before the
    query is answered exactly instead."""

    exact_threshold: int
    max_fetch: int


def margin(need: int) -> int:
    """How many candidates to keep for the best `need`: the screens on the cache's f16 vectors
    and on the float32 pass keep this many, so that rows tied or nearly tied with the need-th
    (which the exact float64 scores may reorder) are never cut; at least 32 more, because for
    small k the cost of a few dozen extra rows is nothing next to a missed hit."""
    return need + max(need, 32)


def find_candidates(
    conn: sqlite3.Connection,
    cache: HnswCache,
    tenant: str,
    query: Vector,
    need: int,
    filters: Filters,
    limits: PlanLimits,
) -> candidates.Candidates:
    """Vectors to rank exactly: the matching ones that can be among the best `need` when
    few can match, else HNSW's best re-checked.

    Few can match when the tenant has few vectors in the space (counted in memory) or one
    filter condition selects few images (counted in SQLite up to the threshold); the exact
    path then starts from those rows. Otherwise HNSW is over-fetched and re-checked.
    """
    space = cache.space
    threshold = max(limits.exact_threshold, need)
    tenant_vectors = cache.counts.get(tenant, 0)
    if tenant_vectors <= threshold:
        return exact(conn, cache, tenant, query, need, filters, tenant_vectors)
    for condition in conditions(filters):
        selected = condition_size(conn, condition, threshold + 1)
        if selected <= threshold:
            return exact(conn, cache, tenant, query, need, filters, selected, condition)
    size = cache.size
    # One candidate in size/tenant_vectors is the tenant's: ask for four times the share
    # that holds `need` of them. The filter conditions each select more than `threshold`
    # rows, but together may select few: widen until enough candidates match.
    fetch = max(64, math.ceil(4 * need * size / tenant_vectors))
    if fetch > limits.max_fetch:
        return exact(conn, cache, tenant, query, need, filters, tenant_vectors)
    fetch = min(size, fetch)
    while True:
        keys = cache.search(query, fetch).tolist()
        if len(keys) <= _SHORTLIST_FROM * margin(need):
            # A few dozen: checked and read in one pass (the cache would save little).
            found = candidates.matching_vectors(conn, tenant, space, filters, keys)
        else:
            rows = candidates.matching_rows(conn, tenant, space, filters, keys)
            found = candidates.with_vectors(conn, shortlist(cache, query, rows, need))
        if len(found) >= need:
            return found
        if fetch >= size or fetch >= limits.max_fetch:
            break
        shortfall = need / max(len(found), 1)
        fetch = min(size, limits.max_fetch, int(fetch * max(4.0, 2 * shortfall)))
    _log.debug("hnsw %s over-fetch came up short; answering exactly", space)
    return exact(conn, cache, tenant, query, need, filters, tenant_vectors)

def exact(
    conn: sqlite3.Connection,
    cache: HnswCache,
    tenant: str,
    query: Vector,
    need: int,
    filters: Filters,
    reachable: int,
    drive: Condition | None = None,
) -> candidates.Candidates:
    """Every matching vector that can be among the best `need`, reached from the images
    `drive` selects (else from the tenant's), read from SQLite; `reachable` says about how
    many rows that start reaches (images the condition selects, or the tenant's vectors).

    Checking a row against the tenant and filters costs SQLite a lookup per row, so rows
    are checked in the order of the cache's similarities and only as far as the bound of
    `shortlist` needs: until `keep` rows passed, then on to the floor they set, less twice
    the cache's error. Rows the cache lacks are checked first and always kept.
    """
    space = cache.space
    keep = margin(need)
    error = cache.cosine_error
    if reachable <= _SHORTLIST_FROM * keep or error is None:
        return candidates.matching_vectors(conn, tenant, space, filters, drive=drive)
    ids = candidates.vector_ids(conn, tenant, space, drive)
    if len(ids) <= _SHORTLIST_FROM * keep:
        return candidates.matching_vectors(conn, tenant, space, filters, ids, drive)
    present, similarity = cache.similarities(query, ids)
    held = np.zeros(len(ids), dtype=bool)
    held[present] = True
    order = [*np.flatnonzero(~held).tolist(), *present[np.argsort(-similarity)].tolist()]
    of_id = dict(zip((ids[i] for i in present.tolist()), similarity.tolist(), strict=True))
    passed: list[candidates.Candidate] = []
    passed_scores: list[float] = []  # of the passed rows the cache holds, best first
    floor: float | None = None
    done = 0
    step = 2 * keep
    while done < len(order):
        batch = [ids[i] for i in order[done : done + step]]
        done += len(batch)
        for row in candidates.matching_rows(conn, tenant, space, filters, batch, drive):
            passed.append(row)
            if row.vector_id in of_id:
                passed_scores.append(of_id[row.vector_id])
        if floor is None and len(passed_scores) >= keep:
            floor = sorted(passed_scores, reverse=True)[keep - 1]
        last = of_id.get(batch[-1])
        if floor is not None and last is not None and last < floor - 2 * error - _ROUNDING:
            break  # every row after this one scores lower still on the cache
        step *= 2
    if floor is not None:
        cut = floor - 2 * error - _ROUNDING
        passed = [row for row in passed if of_id.get(row.vector_id, math.inf) >= cut]
    return candidates.with_vectors(conn, passed)



def shortlist(
    cache: HnswCache, query: Vector, rows: list[candidates.Candidate], need: int
) -> list[candidates.Candidate]:
    """The rows that can be among the best `need`, judged on the cache's in-memory vectors so
    that only those are read from SQLite and scored exactly.

    A cached similarity is within e = `cache.cosine_error` of the exact one. If `need` rows
    score at least f on the cache, each scores at least f - e exactly, so a row of the exact
    answer scores at least f - e (less the rounding of scores) and at least f - 2e on the cache:
    every row below that is dropped, with f the cache's shortlist-th best (no higher than its
    need-th). Rows the cache does not hold are kept. Only worth it when it saves most of the
    reads: HNSW's few dozen over-fetched candidates are read whole (measured 13 % slower
    through the cache at 64 candidates, 1280-d).
    """
    keep_at_least = margin(need)
    error = cache.cosine_error
    if len(rows) <= _SHORTLIST_FROM * keep_at_least or error is None:
        return rows
    present, similarity = cache.similarities(query, [row.vector_id for row in rows])
    if present.size <= keep_at_least:
        return rows
    cut = present.size - keep_at_least
    floor = float(np.partition(similarity, cut)[cut])
    keep = np.ones(len(rows), dtype=bool)
    keep[present] = similarity >= floor - 2 * error - _ROUNDING
    return [rows[i] for i in np.flatnonzero(keep).tolist()]


def rank(
    query: Vector, candidates: candidates.Candidates, need: int
) -> list[tuple[candidates.Candidate, float]]:
    """The best `need` candidates by exact cosine similarity, best first; ties by image id,
    then sub-record.

    A float32 pass over every candidate keeps the best `need` plus a margin, and everything
    tied with the last of those (so ties still fall to the id); only those are scored in
    float64, rounded below float32 resolution so that equal vectors score exactly equal
    whatever the BLAS blocking, and sorted.
    """
    if not len(candidates):
        return []
    matrix = candidates.matrix
    keep = np.arange(len(candidates))
    shortlist = margin(need)
    if len(candidates) > shortlist:
        # Each row divided by its largest component first, so that no finite vector
        # overflows or underflows in float32 (a store takes any magnitude).
        scaled = matrix / np.abs(matrix).max(axis=1, keepdims=True)
        q32 = query / np.abs(query).max()
        approx = (scaled @ q32) / np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
        floor = np.partition(approx, len(approx) - shortlist)[len(approx) - shortlist]
        keep = np.flatnonzero(approx >= floor - 1e-4 * float(np.linalg.norm(q32)))
    kept = matrix[keep].astype(np.float64)
    q = query.astype(np.float64)
    cosine = (kept @ q) / (np.linalg.norm(kept, axis=1) * np.linalg.norm(q))
    scores: list[float] = np.round(np.clip(cosine, -1.0, 1.0), 6).tolist()
    picked = [candidates.rows[i] for i in keep.tolist()]
    order = sorted(
        range(len(picked)), key=lambda j: (-scores[j], picked[j].image_id, picked[j].sub)
    )
    return [(picked[j], scores[j]) for j in order[:need]]
