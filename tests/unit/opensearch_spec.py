"""OpenSearch's official REST API specification (OpenAPI 3.1, ../shared/opensearch-api-spec/
beside the repository, or OPENSEARCH_API_SPEC) as a request-body validator.

A request (method, path, body) is matched to its operation by the specification's own path
templates, and the body is validated with `jsonschema` (Draft 2020-12, the dialect of OpenAPI
3.1) against that operation's request-body schema, the specification's relative `$ref`s between
its YAML files resolved by `referencing`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path(os.environ.get("OPENSEARCH_API_SPEC", ROOT.parent / "shared" / "opensearch-api-spec"))


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    body_ref: str | None  # the request-body schema's URI, None when the operation takes none


def available() -> bool:
    return (SPEC / "spec" / "namespaces").is_dir()


@cache
def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _retrieve(uri: str) -> Resource[Any]:
    return Resource.from_contents(_load(Path(uri.removeprefix("file://"))),
                                  default_specification=DRAFT202012)  # fmt: skip


@cache
def _operations() -> tuple[Operation, ...]:
    found: list[Operation] = []
    for namespace in sorted((SPEC / "spec" / "namespaces").glob("*.yaml")):
        document = _load(namespace)
        bodies = document.get("components", {}).get("requestBodies", {})
        for template, methods in document.get("paths", {}).items():
            regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            for method, operation in methods.items():
                if not isinstance(operation, dict) or "requestBody" not in operation:
                    ref = None
                else:
                    name = operation["requestBody"]["$ref"].rsplit("/", 1)[1]
                    content = bodies[name]["content"]
                    media = next(iter(content))
                    pointer = "/".join(
                        part.replace("~", "~0").replace("/", "~1")
                        for part in ("components", "requestBodies", name, "content", media,
                                     "schema"))  # fmt: skip
                    ref = f"file://{namespace}#/{pointer}"
                found.append(Operation(method.upper(), template, re.compile(regex + r"\Z"), ref))
    return tuple(found)


def operation(method: str, path: str) -> Operation:
    """The operation of a request, preferring the template with the fewest placeholders (as a
    router would: `/_search` before `/{index}`)."""
    matches = [op for op in _operations()
               if op.method == method and op.pattern.match(path)]  # fmt: skip
    if not matches:
        raise LookupError(f"no operation in the specification for {method} {path}")
    return min(matches, key=lambda op: op.template.count("{"))


def errors(method: str, path: str, body: Any) -> list[str]:
    """What is wrong with the request's body by the specification (empty: it conforms)."""
    found = operation(method, path)
    if found.body_ref is None:
        return [] if body is None else [f"{found.template} takes no body"]
    validator = Draft202012Validator({"$ref": found.body_ref},
                                     registry=Registry(retrieve=_retrieve))  # type: ignore[call-arg]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(body)]  # fmt: skip
