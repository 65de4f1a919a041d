"""Manage the API key file (server/auth.py):

    python -m tools.api_keys add --tenant acme --services vision.v1.DetectionService,... FILE
    python -m tools.api_keys revoke --prefix 1a2b3c4d FILE

`add` makes a random key, stores only its SHA-256 and prints the key once, on stdout; the file
is replaced atomically, so a serving process reloads it whole or not at all."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

from server.auth import (
    ALL_SERVICES,
    Grant,
    KeyFileError,
    hash_key,
    parse_key_file,
    render_key_file,
    services_named,
)

KEY_PREFIX = "vk_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def write_atomically(path: Path, text: str) -> None:
    """Replaces path by text once the server would accept it (KeyFileError otherwise)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        # A new file is the owner's alone; an existing one keeps its mode (a container's user
        # may have been given read access).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o600)
        parse_key_file(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add(path: Path, tenant: str, services: frozenset[str]) -> str:
    """Adds a key for tenant and services to the file (created if absent); returns the key."""
    grants = parse_key_file(path) if path.exists() else {}
    key = new_key()
    grants[hash_key(key)] = Grant(tenant, services)
    write_atomically(path, render_key_file(grants, path.suffix == ".json"))
    return key


def revoke(path: Path, prefix: str) -> int:
    """Removes the keys whose hash starts with prefix; returns how many."""
    grants = parse_key_file(path)
    kept = {d: g for d, g in grants.items() if not d.startswith(prefix)}
    write_atomically(path, render_key_file(kept, path.suffix == ".json"))
    return len(grants) - len(kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.api_keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="add a key; prints it once")
    adding.add_argument("--tenant", required=True)
    adding.add_argument("--services", required=True,
                        help=f"comma-separated full service names, or {ALL_SERVICES!r}")
    adding.add_argument("file", type=Path)
    revoking = commands.add_parser("revoke", help="remove keys by a prefix of their hash")
    revoking.add_argument("--prefix", required=True)
    revoking.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            services = services_named(args.services.split(","))
            print(add(args.file, args.tenant, services))
        else:
            if len(args.prefix) < 8:
                parser.error("--prefix needs at least 8 hex digits")
            print(f"revoked {revoke(args.file, args.prefix)} key(s)", file=sys.stderr)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
