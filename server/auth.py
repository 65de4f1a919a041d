"""API keys: the key file (TOML or JSON) maps the SHA-256 of each key to its tenant and the
services it may call; it is reloaded when it changes, so keys are added and revoked without a
restart. Only hashes are held; a presented key is hashed and compared with every entry in
constant time, and keys never reach a log.

Key file (TOML; JSON has the same shape):

    [keys."<sha256 hex of the key>"]
    tenant = "acme"
    services = ["vision.v1.DetectionService", "vision.v1.SearchService"]   # or ["*"]
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ALL_SERVICES = "*"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class KeyFileError(ValueError):
    """The key file cannot be read or does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one key may do: act as `tenant` on `services` (ALL_SERVICES for any)."""

    tenant: str
    services: frozenset[str]

    def allows(self, service: str) -> bool:
        return ALL_SERVICES in self.services or service in self.services


def hash_key(key: str) -> str:
    """The hex SHA-256 a key file stores for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_file(path: Path) -> dict[str, Grant]:
    """The grants of a key file by key hash; KeyFileError when it is unreadable or malformed."""
    try:
        raw = path.read_bytes()
        document: Any = (json.loads(raw) if path.suffix == ".json"
                         else tomllib.loads(raw.decode("utf-8")))
    except (OSError, ValueError) as exc:  # tomllib and json errors are ValueErrors
        raise KeyFileError(f"{path}: {type(exc).__name__}") from exc
    keys = document.get("keys", {}) if isinstance(document, dict) else None
    if not isinstance(keys, dict):
        raise KeyFileError(f"{path}: expected a 'keys' table")
    return {digest: _grant(path, digest, entry) for digest, entry in keys.items()}


def _grant(path: Path, digest: str, entry: Any) -> Grant:
    # Errors name an entry by a prefix of its hash: enough to find it in the file.
    where = f"{path}: keys.{digest[:8]}…"
    if not _HEX_SHA256.fullmatch(digest):
        raise KeyFileError(f"{where}: the key name must be a lower-case hex SHA-256")
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: expected a table")
    tenant, services = entry.get("tenant"), entry.get("services")
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise KeyFileError(f"{where}: tenant must be 1-64 of A-Z a-z 0-9 _ . -")
    if (not isinstance(services, list) or not services
            or not all(isinstance(s, str) and s for s in services)):
        raise KeyFileError(f"{where}: services must be a non-empty list of service names")
    return Grant(tenant, frozenset(services))


def render_key_file(grants: Mapping[str, Grant], json_format: bool) -> str:
    """The text of a key file holding `grants` (what tools.api_keys writes)."""
    table = {digest: {"tenant": g.tenant, "services": sorted(g.services)}
             for digest, g in sorted(grants.items())}
    if json_format:
        return json.dumps({"keys": table}, indent=2) + "\n"
    lines = ["# API keys by SHA-256; see server/auth.py. Written by tools.api_keys."]
    for digest, entry in table.items():
        services = ", ".join(json.dumps(s) for s in entry["services"])
        lines += ["", f'[keys."{digest}"]', f"tenant = {json.dumps(entry['tenant'])}",
                  f"services = [{services}]"]
    return "\n".join(lines) + "\n"


class KeyStore:
    """The grants of the key file as last read; `run` reloads it whenever it changes."""

    def __init__(self, path: Path, poll_interval_s: float) -> None:
        self.path = path
        self._poll_interval_s = poll_interval_s
        self._grants: tuple[tuple[bytes, Grant], ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self.generation = 0  # counts successful loads, for tests and logs
        self._loaded = asyncio.Condition()

    def load(self) -> None:
        """Reads the file now; raises KeyFileError (the start-up path: a bad file stops it)."""
        stamp = self._file_stamp()
        grants = parse_key_file(self.path)
        self._grants = tuple((bytes.fromhex(d), g) for d, g in grants.items())
        self._stamp = stamp
        self.generation += 1
        log.info("api keys loaded from %s: %d keys, %d tenants", self.path, len(grants),
                 len({g.tenant for g in grants.values()}))

    def grant_for(self, key: str) -> Grant | None:
        """The grant of `key`, or None. Every entry is compared (no early exit) in constant
        time, so the answer's timing says nothing about which hash was near."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found: Grant | None = None
        for stored, grant in self._grants:
            if hmac.compare_digest(stored, digest):
                found = grant
        return found

    async def wait_for_generation(self, generation: int) -> None:
        """Returns once the file has been loaded `generation` times."""
        async with self._loaded:
            await self._loaded.wait_for(lambda: self.generation >= generation)

    async def run(self) -> None:
        """Polls the file's stamp; a changed file is reloaded, a broken one keeps the old keys."""
        while True:
            await asyncio.sleep(self._poll_interval_s)
            await self.reload_if_changed()

    async def reload_if_changed(self) -> None:
        try:
            if self._file_stamp() == self._stamp:
                return
            self.load()
        except (OSError, KeyFileError) as exc:
            log.error("api key file not reloaded, keeping the previous keys: %s", exc)
            return
        async with self._loaded:
            self._loaded.notify_all()

    def _file_stamp(self) -> tuple[int, int, int]:
        # Inode too: tools.api_keys replaces the file by rename, which may keep mtime and size.
        stat = os.stat(self.path)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino


def services_named(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.strip() for name in names if name.strip())
