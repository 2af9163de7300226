"""What an unmodified ceph-csi must be told for old handles to work: rendered from the Ready
ClusterIDMappings into ceph-csi's own two files.

- config.json: ceph-csi looks the handle's clusterID up here *before* it reads the cluster
  mapping, so a failed site's clusterID needs an entry of its own. It gets a copy of the local
  entry (this cluster's monitors, radosNamespace and the rest) under the remote clusterID.
- cluster-mapping.json: the clusterIDs and pool IDs of each Ready mapping, siteA as key, siteB as
  value; ceph-csi matches either side, so the same file serves both sites.

Every entry written is marked `renderedBy` (ceph-csi ignores keys it does not know); entries
without the mark (an admin's own) are never changed, and a clusterID an admin configured is not
aliased over. Entries of mappings that are no longer Ready go. Where this controller does not
write (no --manage-csi-config), `missing_entries` says what an admin must add by hand.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import tenacity
from kubernetes_asyncio.client import ApiClient

from reconciler.controllers.clusterids import MappingSpec
from reconciler.csiconfig import ConfigKey, CSIConfigLayout
from reconciler.errors import InvalidConfig
from reconciler.k8s import (
    ApiStatusError,
    Event,
    Informer,
    KubeObject,
    Result,
    TerminalError,
    request_json,
)
from reconciler.k8s.conditions import is_ready
from reconciler.k8s.events import EventRecorder
from reconciler.kinds import CLUSTER_ID_MAPPING_KIND, COMPONENT, GROUP

log = logging.getLogger(__name__)

#: Marks the entries this controller renders, for people reading the file. Rook and
#: ceph-csi-operator re-encode entries and drop keys they do not know, so what is ours is
#: recorded in an annotation of the ConfigMap per file too (they keep annotations).
RENDERED_BY = "renderedBy"
#: The renderer's queue keys: one per file.
CONFIG_FILE = "config.json"
MAPPING_FILE = "cluster-mapping.json"
OWNED_ANNOTATION = {
    CONFIG_FILE: f"{GROUP}/rendered-config-json",
    MAPPING_FILE: f"{GROUP}/rendered-cluster-mapping-json",
}
#: How often one write is retried after another writer changed the ConfigMap (409) meanwhile.
CONFLICT_ATTEMPTS = 5


@dataclass(frozen=True)
class Rendered:
    """One file as it should be, and the IDs of the entries in it that are ours."""

    text: str
    owned: frozenset[str]
    """config.json: clusterIDs; cluster-mapping.json: digests of the entries' content."""
    entries: tuple[tuple[str, str], ...]
    """(entry ID, the ClusterIDMapping it was rendered for), in order."""


def ready_mappings(mappings: Iterable[KubeObject]) -> list[tuple[MappingSpec, KubeObject]]:
    return [
        (MappingSpec.from_object(obj), obj)
        for obj in sorted(mappings, key=lambda o: str(o["metadata"]["name"]))
        if is_ready(obj)
    ]


def _mark(spec: MappingSpec) -> str:
    return f"{COMPONENT}: ClusterIDMapping {spec.name}"


def field(entry: Mapping[str, Any], name: str) -> Any:
    """An entry's field as Go's JSON decoding finds it: the key's case does not matter (Rook
    writes "ClusterIDMapping")."""
    folded = name.casefold()
    return next((v for k, v in entry.items() if k.casefold() == folded), None)


def config_id(entry: Mapping[str, Any]) -> str:
    return str(field(entry, "clusterID") or "")


def mapping_id(entry: Mapping[str, Any]) -> str:
    """The entry's content, whatever the case of its keys and without the mark: an admin's own
    entry for the same pair of clusterIDs (say, with CephFSFscIDMapping) is not ours, while ours
    re-encoded by Rook still is."""
    content = {k.casefold(): v for k, v in entry.items() if k != RENDERED_BY}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _ours(entry: Mapping[str, Any], entry_id: str, owned: Collection[str]) -> bool:
    return RENDERED_BY in entry or (bool(entry_id) and entry_id in owned)


def render_config(
    mappings: Iterable[KubeObject], existing: str | None, local: str, owned: Collection[str] = ()
) -> Rendered:
    """config.json: `existing`'s own entries, then one alias of the `local` entry per remote
    clusterID of a Ready mapping that the file does not name already. Raises InvalidConfig when
    `existing` is not a JSON list of objects: it is not overwritten."""
    kept = [e for e in parse_entries(existing, CONFIG_FILE) if not _ours(e, config_id(e), owned)]
    local_entry = next((e for e in kept if config_id(e) == local), None)
    named = {config_id(e) for e in kept}
    aliases: list[dict[str, Any]] = []
    rendered: list[tuple[str, str]] = []
    if local_entry is not None:
        for spec, obj in ready_mappings(mappings):
            remote = str(obj["status"].get("remoteClusterID", ""))
            if remote and remote not in named:
                named.add(remote)
                alias = {k: v for k, v in local_entry.items() if k.casefold() != "clusterid"}
                aliases.append({"clusterID": remote, **alias, RENDERED_BY: _mark(spec)})
                rendered.append((remote, spec.name))
    return Rendered(_dump(kept + aliases), frozenset(i for i, _ in rendered), tuple(rendered))


def render_cluster_mapping(
    mappings: Iterable[KubeObject], existing: str | None = None, owned: Collection[str] = ()
) -> Rendered:
    """cluster-mapping.json: `existing`'s own entries, then one per Ready mapping. Pools whose
    IDs are not both known are left out. Raises InvalidConfig as `render_config` does."""
    entries = [
        e for e in parse_entries(existing, MAPPING_FILE) if not _ours(e, mapping_id(e), owned)
    ]
    rendered: list[tuple[str, str]] = []
    for spec, obj in ready_mappings(mappings):
        entry = {
            "clusterIDMapping": {spec.site_a: spec.site_b},
            "RBDPoolIDMapping": pool_pairs(spec, obj),
            RENDERED_BY: _mark(spec),
        }
        entries.append(entry)
        rendered.append((mapping_id(entry), spec.name))
    return Rendered(_dump(entries), frozenset(i for i, _ in rendered), tuple(rendered))


def pool_pairs(spec: MappingSpec, obj: KubeObject) -> list[dict[str, str]]:
    """The mapping's pools as ceph-csi's {"<siteA ID>": "<siteB ID>"} pairs."""
    status = obj["status"]
    local_is_a = status.get("localClusterID") == spec.site_a
    pairs = []
    for pool in status.get("rbdPools") or []:
        local_id, remote_id = pool.get("localPoolID"), pool.get("remotePoolID")
        if local_id is None or remote_id is None:
            continue
        a, b = (local_id, remote_id) if local_is_a else (remote_id, local_id)
        pairs.append({str(a): str(b)})
    return pairs


def missing_entries(
    obj: KubeObject, config: str | None, cluster_mapping: str | None, layout: CSIConfigLayout
) -> list[str]:
    """What ceph-csi lacks to resolve the old handles of Ready mapping `obj`, for its condition
    (empty when all is there). Unreadable files are reported as such."""
    spec = MappingSpec.from_object(obj)
    remote = str(obj["status"].get("remoteClusterID", ""))
    missing = []
    try:
        configured = {config_id(e) for e in parse_entries(config, CONFIG_FILE)}
        if remote not in configured:
            missing.append(
                f"{layout.config} has no entry for clusterID {remote!r} (ceph-csi rejects its "
                "handles: 'missing configuration for cluster ID')"
            )
    except InvalidConfig as err:
        missing.append(f"{layout.config}: {err}")
    if spec.within_one_cluster and not spec.pools:
        return missing
    try:
        entries = parse_entries(cluster_mapping, MAPPING_FILE)
    except InvalidConfig as err:
        return [*missing, f"{layout.cluster_mapping}: {err}"]
    wanted = {json.dumps(pair, sort_keys=True) for pair in pool_pairs(spec, obj)}
    matched = False
    for entry in entries:
        ids = field(entry, "clusterIDMapping") or {}
        if ids in ({spec.site_a: spec.site_b}, {spec.site_b: spec.site_a}):
            matched = True
            pairs = field(entry, "RBDPoolIDMapping") or []
            wanted -= {json.dumps(_swap(p, ids, spec), sort_keys=True) for p in pairs}
    if not matched or wanted:
        pools = f" with pool IDs {', '.join(sorted(wanted))}" if wanted else ""
        missing.append(
            f"{layout.cluster_mapping} does not map clusterID {spec.site_a!r} to "
            f"{spec.site_b!r}{pools}"
        )
    return missing


def _swap(pair: Any, ids: dict[str, str], spec: MappingSpec) -> Any:
    """An entry written siteB -> siteA has its pool pairs the other way round."""
    if ids == {spec.site_a: spec.site_b} or not isinstance(pair, dict):
        return pair
    return {str(v): str(k) for k, v in pair.items()}


def parse_entries(text: str | None, what: str) -> list[dict[str, Any]]:
    if not text or not text.strip():
        return []
    try:
        parsed = json.loads(text)
    except ValueError as err:
        raise InvalidConfig(f"the {what} in place is not JSON ({err})") from err
    if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
        raise InvalidConfig(f"the {what} in place is not a JSON list of objects")
    return parsed


def _dump(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, indent=2) + "\n"


def owned_of(config_map: KubeObject | None, file: str) -> frozenset[str]:
    """What the ConfigMap's annotation records as ours in `file` (nothing when unreadable)."""
    if config_map is None:
        return frozenset()
    text = ((config_map.get("metadata") or {}).get("annotations") or {}).get(OWNED_ANNOTATION[file])
    try:
        owned = json.loads(text) if text else []
    except ValueError:
        return frozenset()
    return frozenset(str(i) for i in owned) if isinstance(owned, list) else frozenset()


class CephCSIConfigRenderer:
    """Keeps ceph-csi's config.json and cluster-mapping.json keys equal to what they render to.

    Each write is a merge patch of one key (and its ownership annotation) carrying the
    resourceVersion it was rendered from, so an edit made meanwhile (by an admin, Rook, ...) is
    never overwritten blindly: the write fails with 409 and is rendered again from the fresh
    ConfigMap, a few times at most. Entries of ours that another writer removed are put back,
    with a Warning Event on their ClusterIDMapping: a writer that keeps removing them shows.
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        cluster_id_mappings: Informer,
        config_maps: dict[str, Informer],
        layout: CSIConfigLayout,
        local_cluster_id: str,
        events: EventRecorder,
    ) -> None:
        self.api_client = api_client
        self.cluster_id_mappings = cluster_id_mappings
        self.config_maps = config_maps
        """File (CONFIG_FILE, MAPPING_FILE) -> the informer of the ConfigMap that holds it."""
        self.layout = layout
        self.local_cluster_id = local_cluster_id
        self.events = events

    @staticmethod
    def both_files(event: Event) -> list[str]:
        return [CONFIG_FILE, MAPPING_FILE]

    def target(self, file: str) -> ConfigKey:
        return self.layout.config if file == CONFIG_FILE else self.layout.cluster_mapping

    def render(self, file: str, existing: str | None, owned: frozenset[str]) -> Rendered:
        mappings = self.cluster_id_mappings.store.objects()
        if file == CONFIG_FILE:
            return render_config(mappings, existing, self.local_cluster_id, owned)
        return render_cluster_mapping(mappings, existing, owned)

    async def reconcile(self, file: str) -> Result | None:
        target = self.target(file)
        cached = self.config_maps[file].store.get(f"{target.namespace}/{target.name}")
        try:
            await self._write(file, target, cached)
        except InvalidConfig as err:
            # Only a human can fix the file; it is retried when the ConfigMap changes.
            raise TerminalError(f"{target}: {err}; left as it is") from err
        return None

    async def _write(self, file: str, target: ConfigKey, cached: KubeObject | None) -> None:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_is_conflict),
            stop=tenacity.stop_after_attempt(CONFLICT_ATTEMPTS),
            wait=tenacity.wait_random(0.05, 0.5),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    cached = await self._fetch(target)
                await self._write_once(file, target, cached)

    async def _write_once(self, file: str, target: ConfigKey, cached: KubeObject | None) -> None:
        in_place = None if cached is None else (cached.get("data") or {}).get(target.key)
        owned = owned_of(cached, file)
        rendered = self.render(file, in_place, owned)
        annotation = json.dumps(sorted(rendered.owned))
        current = parse_entries(in_place, file)
        if current == json.loads(rendered.text) and (owned == rendered.owned):
            return  # the same entries: keep the admin's formatting
        path = f"/api/v1/namespaces/{target.namespace}/configmaps"
        metadata: dict[str, Any] = {"annotations": {OWNED_ANNOTATION[file]: annotation}}
        if cached is None:
            body = {
                "metadata": {"name": target.name, **metadata},
                "data": {target.key: rendered.text},
            }
            await request_json(self.api_client, "POST", path, body)
        else:
            # A merge patch of this key alone leaves the other keys untouched; the
            # resourceVersion makes it fail (409) if the ConfigMap changed since it was read.
            metadata["resourceVersion"] = cached["metadata"]["resourceVersion"]
            await request_json(
                self.api_client,
                "PATCH",
                f"{path}/{target.name}",
                {"metadata": metadata, "data": {target.key: rendered.text}},
                content_type="application/merge-patch+json",
            )
        log.info("rendered ceph-csi configuration", extra={"target": str(target)})
        present = {config_id(e) if file == CONFIG_FILE else mapping_id(e) for e in current}
        for entry_id, mapping in rendered.entries:
            if entry_id in owned and entry_id not in present:
                await self._report_restored(target, entry_id, mapping)

    async def _report_restored(self, target: ConfigKey, entry_id: str, mapping: str) -> None:
        obj = self.cluster_id_mappings.store.get(mapping)
        if obj is None:
            return
        await self.events.record(
            obj,
            CLUSTER_ID_MAPPING_KIND,
            warning=True,
            reason="CephCSIConfigOverwritten",
            message=f"another writer removed the entry {entry_id} of {target}; it was put back",
        )

    async def _fetch(self, target: ConfigKey) -> KubeObject | None:
        try:
            return await request_json(
                self.api_client,
                "GET",
                f"/api/v1/namespaces/{target.namespace}/configmaps/{target.name}",
            )
        except ApiStatusError as err:
            if err.status == 404:
                return None
            raise


def _is_conflict(err: BaseException) -> bool:
    """409: changed since read (PATCH) or created meanwhile (POST)."""
    return isinstance(err, ApiStatusError) and err.status == 409
