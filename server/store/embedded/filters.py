"""Filters compiled to SQL parts: each condition a child table, its clauses and parameters.

A condition is kept as parts (never as a finished statement), so that it can be used both as
the images it selects (`images_sql`: a selective condition can drive a query) and as a probe of
one image row (`exists`), and a query can leave out the condition that drives it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from server.store.base import Filters


@dataclass(frozen=True, slots=True)
class Condition:
    """The rows of `table` (a child table of `images`, keyed by its `image` column) where every
    clause holds; the clauses' `?` take `params` in order."""

    table: str
    clauses: tuple[str, ...]
    params: tuple[object, ...]

    @property
    def images_sql(self) -> str:
        """The images the condition selects: `SELECT image FROM ...`, with `params`."""
        return f"SELECT image FROM {self.table} WHERE {' AND '.join(self.clauses)}"

    def exists(self, alias: str) -> str:
        """The condition tested for one image row (a primary-key probe per image)."""
        where = " AND ".join((f"image = {alias}.id", *self.clauses))
        return f"EXISTS (SELECT 1 FROM {self.table} WHERE {where})"


@dataclass(frozen=True, slots=True)
class Where:
    """A WHERE condition as its clauses (ANDed) and their parameters."""

    clauses: tuple[str, ...]
    params: tuple[object, ...]

    @property
    def sql(self) -> str:
        return " AND ".join(self.clauses)


def conditions(filters: Filters) -> list[Condition]:
    found: list[Condition] = []
    if filters.labels:
        names = sorted(filters.labels)
        found.append(Condition("labels", (f"name IN ({_marks(names)})",), tuple(names)))
    for key, value in sorted(filters.metadata.items()):
        found.append(Condition("metadata", ("key = ?", "value = ?"), (key, value)))
    for bound in filters.ranges:
        column = "num" if bound.numeric else "value"
        clauses = ["key = ?"]
        params: list[object] = [bound.key]
        if bound.gte is not None:
            clauses.append(f"{column} >= ?")
            params.append(bound.gte)
        if bound.lte is not None:
            clauses.append(f"{column} <= ?")
            params.append(bound.lte)
        if bound.numeric:
            clauses.append("num IS NOT NULL")
        found.append(Condition("metadata", tuple(clauses), tuple(params)))
    if filters.person_ids:
        people = sorted(filters.person_ids)
        found.append(Condition("faces", (f"person_id IN ({_marks(people)})",), tuple(people)))
    return found


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def where(tenant: str, filters: Filters, alias: str = "i", skip: Condition | None = None) -> Where:
    """The condition over `images AS alias` for the tenant and the filters; each filter
    condition is a primary-key probe, so whatever drives the query stays in charge. `skip`: a
    condition the query already meets (the one driving it)."""
    clauses = [f"{alias}.tenant = ?"]
    params: list[object] = [tenant]
    if filters.exclude_ids:
        excluded = sorted(filters.exclude_ids)
        clauses.append(f"{alias}.image_id NOT IN ({_marks(excluded)})")
        params.extend(excluded)
    for condition in conditions(filters):
        if condition != skip:  # equal, not identical: conditions() builds new ones
            clauses.append(condition.exists(alias))
            params.extend(condition.params)
    return Where(tuple(clauses), tuple(params))


def face_where(filters: Filters, alias: str = "v") -> Where:
    """For rows of `vectors AS alias` in the faces space: the face itself belongs to one of
    `filters.person_ids` (`where` only asks that the image has such a face)."""
    if not filters.person_ids:
        return Where((), ())
    people = sorted(filters.person_ids)
    return Where(
        (f"EXISTS (SELECT 1 FROM faces f WHERE f.image = {alias}.image AND f.idx = {alias}.sub"
         f" AND f.person_id IN ({_marks(people)}))",),
        tuple(people),
    )  # fmt: skip


def condition_size(conn: sqlite3.Connection, condition: Condition, limit: int) -> int:
    """How many rows (all tenants) the condition selects, counting no further than `limit`."""
    row = conn.execute(
        f"SELECT COUNT(*) FROM ({condition.images_sql} LIMIT ?)", [*condition.params, limit]
    ).fetchone()
    return int(row[0])
