"""Read slm.io objects, v1 Nodes, Secrets and ConfigMaps from YAML files and folders (the offline CLI, the
standalone gateway).

Errors name the file, the document and the object, and say which field is wrong, so a user can fix the
manifest without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from slm_operator.api.v1alpha1 import KINDS, FineTuneJob, GPUPool, Resource, SLMDeployment, SLMRoute
from slm_operator.contract import API_VERSION

#: the v1 kinds read, and the field of Manifests that holds them
_V1_KINDS = {"Node": "nodes", "Secret": "secrets", "ConfigMap": "config_maps"}


class ManifestError(Exception):
    """A manifest could not be read or is invalid."""


@dataclass
class Manifests:
    """Everything read from the given paths, by kind."""

    pools: list[GPUPool] = field(default_factory=list)
    deployments: list[SLMDeployment] = field(default_factory=list)
    finetune_jobs: list[FineTuneJob] = field(default_factory=list)
    routes: list[SLMRoute] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    #: v1 Secrets (the standalone gateway's API-key hashes and external backends' keys), as dicts
    secrets: list[dict[str, Any]] = field(default_factory=list)
    #: v1 ConfigMaps (the standalone gateway's task classifiers), as dicts
    config_maps: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    #: "kind/name" -> "file (document n)", to name the source of a problem found later.
    sources: dict[str, str] = field(default_factory=dict)

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """The labels of the Namespace manifests given, by name (they map deployments to pool tenants)."""
        out: dict[str, dict[str, str]] = {}
        for o in self.other:
            if o.get("kind") == "Namespace":
                meta = o.get("metadata") or {}
                out[str(meta.get("name", ""))] = {
                    str(k): str(v) for k, v in (meta.get("labels") or {}).items()
                }
        return out


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``spec.replicas: Input should be greater than or equal to 0``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def parse_object(doc: dict[str, Any]) -> Resource:
    """Validate one slm.io document into its model; raises ValueError with the fields named."""
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION or kind not in KINDS:
        raise ValueError(f"not an {API_VERSION} object (apiVersion={doc.get('apiVersion')!r}, kind={kind!r})")
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc)) from None


def _files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Each file once, in the order given, also when a folder and a file inside it are both named."""
    seen: set[Path] = set()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(
                f for f in path.rglob("*") if f.suffix in (".yaml", ".yml", ".json") and f.is_file()
            )
        elif path.exists():
            found = [path]
        else:
            raise ManifestError(f"{path}: no such file or folder")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                yield f


def _documents(data: Any) -> Iterator[dict[str, Any]]:
    if isinstance(data, dict) and data.get("kind", "").endswith("List") and "items" in data:
        for item in data["items"] or []:
            yield from _documents(item)
    elif isinstance(data, dict):
        yield data
    elif data is not None:
        raise ValueError("a manifest must be a mapping (an object with apiVersion and kind)")


def _add(out: Manifests, obj: Resource) -> None:
    if isinstance(obj, GPUPool):
        out.pools.append(obj)
    elif isinstance(obj, SLMDeployment):
        out.deployments.append(obj)
    elif isinstance(obj, FineTuneJob):
        out.finetune_jobs.append(obj)
    elif isinstance(obj, SLMRoute):
        out.routes.append(obj)


def load_manifests(paths: Iterable[str | Path]) -> Manifests:
    """Read GPUPools, SLMDeployments, FineTuneJobs, SLMRoutes, Nodes, Secrets and ConfigMaps; other kinds are
    kept aside."""
    out = Manifests()
    seen_objects: dict[str, str] = {}  # "Kind namespace/name" -> where it was first read
    for path in _files(paths):
        try:
            text = path.read_text()
            raw_docs = list(yaml.safe_load_all(text))
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: cannot read: {exc}") from None
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not valid YAML: {exc}") from None
        for n, raw in enumerate(raw_docs, 1):
            try:
                docs = list(_documents(raw))
            except ValueError as exc:
                raise ManifestError(f"{path} (document {n}): {exc}") from None
            for doc in docs:
                kind = doc.get("kind")
                name = (doc.get("metadata") or {}).get("name", "<no name>")
                where = f"{path} (document {n}, {kind} {name})"
                key = f"{kind}/{name}"
                namespace = (doc.get("metadata") or {}).get("namespace")
                ident = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
                if ident in seen_objects:
                    raise ManifestError(
                        f"{where}: {ident} is also defined in {seen_objects[ident]}: give each object once"
                    )
                seen_objects[ident] = f"{path} (document {n})"
                out.sources[key] = f"{path} (document {n})"
                _add_document(out, doc, where)
    return out


def _add_document(out: Manifests, doc: dict[str, Any], where: str) -> None:
    kind = doc.get("kind")
    if doc.get("apiVersion") == API_VERSION:
        try:
            _add(out, parse_object(doc))
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}") from None
    elif kind in _V1_KINDS and doc.get("apiVersion") == "v1":
        if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
            raise ManifestError(f"{where}: a {kind} needs `metadata.name`")
        getattr(out, _V1_KINDS[kind]).append(doc)
    else:
        out.other.append(doc)


def manifests_of(objects: Iterable[dict[str, Any]], source: str) -> Manifests:
    """What ``load_manifests`` gives for objects read elsewhere (e.g. listed from the API server): each object
    sorted by kind, its source named ``source`` in messages."""
    out = Manifests()
    for doc in objects:
        meta = doc.get("metadata") or {}
        where = f"{source} ({doc.get('kind')} {meta.get('namespace', '')}/{meta.get('name', '<no name>')})"
        out.sources[f"{doc.get('kind')}/{meta.get('name')}"] = source
        _add_document(out, doc, where)
    return out
