"""People in the embedded store: faces grouped by their `person_id`, names kept apart.

A person is derived from the faces that carry its id, so one whose last face is deleted is gone
with no clean-up to forget; its name row stays harmlessly in `people` and comes back only if a
face carries the id again (a merge cannot revive an id: it only moves faces to a living one).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from server.domain import Box
from server.store.base import Person
from server.store.embedded.schema import transaction

# Per person of the tenant: faces, distinct images, and the best face (score, then image id and
# position) as the cover; ranked most faces first, then by id.
_PEOPLE = """
WITH tenant_faces AS (
    SELECT f.person_id, f.score, f.idx, i.image_id, f.x_min, f.y_min, f.x_max, f.y_max
    FROM images i CROSS JOIN faces f ON f.image = i.id
    WHERE i.tenant = ? AND f.person_id != '' {only}
), ranked AS (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY person_id ORDER BY score DESC, image_id, idx) AS place,
        COUNT(*) OVER (PARTITION BY person_id) AS faces
    FROM tenant_faces
), counted AS (
    SELECT person_id, COUNT(DISTINCT image_id) AS images FROM tenant_faces GROUP BY person_id
)
SELECT r.person_id, COALESCE(p.name, ''), r.faces, c.images, r.image_id,
       r.x_min, r.y_min, r.x_max, r.y_max
FROM ranked r JOIN counted c ON c.person_id = r.person_id
LEFT JOIN people p ON p.tenant = ? AND p.person_id = r.person_id
WHERE r.place = 1
ORDER BY r.faces DESC, r.person_id
LIMIT ? OFFSET ?
"""


def _people(
    conn: sqlite3.Connection, tenant: str, ids: Sequence[str] | None, limit: int, offset: int
) -> list[Person]:
    only = "" if ids is None else f"AND f.person_id IN ({', '.join('?' * len(ids))})"
    rows = conn.execute(
        _PEOPLE.format(only=only), [tenant, *(ids or ()), tenant, limit, offset]
    )
    return [
        Person(person_id, name, faces, images, image_id, Box(*box))
        for person_id, name, faces, images, image_id, *box in rows
    ]


def list_people(conn: sqlite3.Connection, tenant: str, limit: int, offset: int) -> list[Person]:
    with transaction(conn):
        return _people(conn, tenant, None, limit, offset)


def get_person(conn: sqlite3.Connection, tenant: str, person_id: str) -> Person | None:
    with transaction(conn):
        found = _people(conn, tenant, [person_id], 1, 0)
    return found[0] if found else None


def rename_person(
    conn: sqlite3.Connection, tenant: str, person_id: str, name: str
) -> Person | None:
    with transaction(conn, write=True):
        if not _people(conn, tenant, [person_id], 1, 0):
            return None
        conn.execute(
            "INSERT INTO people (tenant, person_id, name) VALUES (?, ?, ?)"
            " ON CONFLICT (tenant, person_id) DO UPDATE SET name = excluded.name",
            (tenant, person_id, name),
        )
        return _people(conn, tenant, [person_id], 1, 0)[0]


def merge_people(
    conn: sqlite3.Connection, tenant: str, person_ids: Sequence[str], target_id: str
) -> Person | None:
    """Every face of `person_ids` now carries `target_id`, in one transaction; the merged
    people's names are dropped (the target keeps its own)."""
    with transaction(conn, write=True):
        if not _people(conn, tenant, [target_id], 1, 0):
            return None
        marks = ", ".join("?" * len(person_ids))
        conn.execute(
            f"UPDATE faces SET person_id = ? WHERE person_id IN ({marks})"
            " AND image IN (SELECT id FROM images WHERE tenant = ?)",
            [target_id, *person_ids, tenant],
        )
        conn.execute(
            f"DELETE FROM people WHERE tenant = ? AND person_id IN ({marks})",
            [tenant, *person_ids],
        )
        return _people(conn, tenant, [target_id], 1, 0)[0]
