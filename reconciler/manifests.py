"""Kubernetes manifests from files, as admins keep them: YAML or JSON, one object, a list of
objects, a `kind: List` (what `kubectl get -o yaml` prints) or several YAML documents.

Used by `preflight` and `rewrite-pvs` for PV backups, ClusterIDMappings and the like. Nothing
here talks to an API server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import InvalidInput

Manifest = dict[str, Any]


class InvalidManifest(InvalidInput):
    reason = "InvalidManifest"


def parse_manifests(text: str, source: str) -> list[Manifest]:
    """Every object in `text` (`source` names it in errors), Lists flattened, empty documents
    skipped. Raises InvalidManifest for text that is not YAML/JSON or holds a non-object."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise InvalidManifest(f"{source}: not YAML or JSON: {err}") from err
    objects: list[Manifest] = []
    for index, document in enumerate(documents):
        objects.extend(_flatten(document, f"{source} document {index + 1}"))
    return objects


def _flatten(document: Any, where: str) -> list[Manifest]:
    if document is None:
        return []
    if isinstance(document, list):
        return [o for i, item in enumerate(document) for o in _flatten(item, f"{where} item {i}")]
    if not isinstance(document, dict):
        raise InvalidManifest(f"{where}: expected an object, got {type(document).__name__}")
    kind = str(document.get("kind") or "")
    if kind == "List" or (kind.endswith("List") and isinstance(document.get("items"), list)):
        return _flatten(document.get("items") or [], where)
    return [document]


def read_manifests(paths: Iterable[Path]) -> list[Manifest]:
    """The objects of every file in `paths`, in order; `-` reads standard input."""
    objects: list[Manifest] = []
    for path in paths:
        if str(path) == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            try:
                text = path.read_text()
            except OSError as err:
                raise InvalidManifest(f"cannot read {path}: {err.strerror or err}") from err
            source = str(path)
        objects.extend(parse_manifests(text, source))
    return objects


def of_kind(objects: Iterable[Manifest], kind: str) -> tuple[list[Manifest], list[str]]:
    """(the objects of `kind`, a description of each other object), so a caller can say what
    it left out instead of dropping it silently."""
    matching: list[Manifest] = []
    others: list[str] = []
    for obj in objects:
        if obj.get("kind") == kind:
            matching.append(obj)
        else:
            name = (obj.get("metadata") or {}).get("name") or "<unnamed>"
            others.append(f"{obj.get('kind') or '<no kind>'} {name}")
    return matching, others


def name_of(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def dump_yaml(objects: Iterable[Manifest]) -> str:
    """Objects as multi-document YAML, keys in their order (as read, so a diff stays small)."""
    return yaml.safe_dump_all(list(objects), sort_keys=False, default_flow_style=False)
