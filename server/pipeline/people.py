"""People: how the faces of an ingested image join persons, and listing, renaming and merging
them.

At ingest each face, best detection score first, takes the person of its nearest stored face
when their identity cosine reaches `people.match_cosine` and no other face of the same image has
taken that person (two faces in one photo are two people); otherwise it starts a new person.
A person exists while a stored face carries its id, so the store derives people from faces and
keeps only their names apart.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

from server.domain import FieldViolation, Input, InvalidArgumentError, NotFoundError
from server.store.base import MAX_OFFSET, Filters, ImageRecord, Person, Space, VectorStore

# Neighbours read per face: the nearest few stored faces, enough to skip those whose person
# another face of the same image has already taken.
NEIGHBOURS = 8
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 256
MAX_MERGE = 100


def new_person_id() -> str:
    return "p-" + secrets.token_hex(8)


async def assign_people(store: VectorStore, record: ImageRecord,
                        match_cosine: float) -> ImageRecord:
    """The record with each face's person_id set. The record's own earlier version is not
    excluded from the neighbours: ingesting an image again keeps its faces' people (and their
    names) instead of starting new ones."""
    taken: set[str] = set()
    people: dict[int, str] = {}
    order = sorted(range(len(record.faces)), key=lambda i: (-record.faces[i].score, i))
    for i in order:
        hits = await store.knn(record.tenant, Space.FACES, record.faces[i].embedding, NEIGHBOURS,
                               Filters(), min_score=match_cosine)
        person = next((hit.person_id for hit in hits
                       if hit.person_id and hit.person_id not in taken), "")
        people[i] = person or new_person_id()
        taken.add(people[i])
    return replace(record, faces=tuple(replace(face, person_id=people[i])
                                       for i, face in enumerate(record.faces)))


@dataclass(frozen=True, slots=True)
class PeoplePage:
    people: tuple[Person, ...]
    next_page_token: str


class PeoplePipeline:
    def __init__(self, store: VectorStore) -> None:
        self._store = store

    async def list(self, tenant: str, page_size: int, page_token: str) -> PeoplePage:
        violations: list[FieldViolation] = []
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation(
                Input.REQUEST, "page_size", f"must be in [0, {MAX_PAGE_SIZE}] (0 = default)"))
        offset = _offset(page_token, violations)
        if violations:
            raise InvalidArgumentError("INVALID_ARGUMENT", tuple(violations))
        size = page_size or DEFAULT_PAGE_SIZE
        found = await self._store.list_people(tenant, size + 1, offset)
        more = len(found) > size and offset + size <= MAX_OFFSET
        return PeoplePage(found[:size], _token(offset + size) if more else "")

    async def get(self, tenant: str, person_id: str) -> Person:
        _check_id(person_id, "id")
        person = await self._store.get_person(tenant, person_id)
        if person is None:
            raise NotFoundError("person", person_id, "id")
        return person

    async def rename(self, tenant: str, person_id: str, name: str) -> Person:
        _check_id(person_id, "person.id")
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise InvalidArgumentError.one("INVALID_ARGUMENT", Input.REQUEST, "person.name",
                                           f"must be at most {MAX_NAME_CHARS} printable "
                                           "characters")
        person = await self._store.rename_person(tenant, person_id, name)
        if person is None:
            raise NotFoundError("person", person_id, "person.id")
        return person

    async def merge(self, tenant: str, person_ids: tuple[str, ...], target_id: str) -> Person:
        _check_id(target_id, "target_id")
        if not 1 <= len(person_ids) <= MAX_MERGE:
            raise InvalidArgumentError.one("INVALID_ARGUMENT", Input.REQUEST, "person_ids",
                                           f"must list 1 to {MAX_MERGE} ids")
        for i, person_id in enumerate(person_ids):
            _check_id(person_id, f"person_ids[{i}]")
            if person_id == target_id:
                raise InvalidArgumentError.one("INVALID_ARGUMENT", Input.REQUEST,
                                               f"person_ids[{i}]", "must not be the target")
        if await self._store.get_person(tenant, target_id) is None:
            raise NotFoundError("person", target_id, "target_id")
        for i, person_id in enumerate(person_ids):
            if await self._store.get_person(tenant, person_id) is None:
                raise NotFoundError("person", person_id, f"person_ids[{i}]")
        merged = await self._store.merge_people(tenant, frozenset(person_ids), target_id)
        if merged is None:  # the target's last face was deleted meanwhile
            raise NotFoundError("person", target_id, "target_id")
        return merged


def _check_id(person_id: str, path: str) -> None:
    if not 1 <= len(person_id) <= MAX_ID_CHARS or not person_id.isprintable():
        raise InvalidArgumentError.one("INVALID_ARGUMENT", Input.REQUEST, path,
                                       f"must be 1 to {MAX_ID_CHARS} printable characters")


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(page_token: str, violations: list[FieldViolation]) -> int:
    if not page_token:
        return 0
    try:
        decoded: Any = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        offset = int(decoded["offset"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        offset = -1
    if not 0 <= offset <= MAX_OFFSET:
        violations.append(FieldViolation(Input.REQUEST, "page_token",
                                          "not a token this service issued"))
        return 0
    return offset
