"""ClusterIDMappings that stay honest when the world around them changes: a conflict that arrives
after volumes were remapped, a stray PV with another pool ID, IDs learnt in one mapping and given
in another's spec, and --dry-run, where the ClusterIDMapping controller does not run.

The API client is tests/unit/conftest.py's RecordingApiClient; the informers' stores are filled by
hand and given what the server holds after each write, as a watch would.
"""

from __future__ import annotations

import copy
import json

import pytest

from reconciler.controllers.cephcsi import render_cluster_mapping
from reconciler.controllers.clusteridmapping import ClusterIDMappingReconciler
from reconciler.controllers.clusterids import effective_spec, mapped_through
from reconciler.errors import ClusterNotMapped, MappingConflicting
from reconciler.k8s import KubeObject
from reconciler.kinds import CLUSTER_ID_MAPPINGS
from tests.unit.conftest import (
    LOCAL,
    RecordingApiClient,
    cluster_id_mapping,
    cluster_id_mapping_reconciler,
    cluster_id_mappings_informer,
    condition,
    handle,
    pv,
    volume_handle_mapping,
)

CIDM_PATH = CLUSTER_ID_MAPPINGS.collection_path()
POOL = "replicapool"


def create(
    api: RecordingApiClient, reconciler: ClusterIDMappingReconciler, obj: KubeObject
) -> None:
    api.objects[f"{CIDM_PATH}/{obj['metadata']['name']}"] = copy.deepcopy(obj)
    reconciler.cluster_id_mappings.store.upsert(obj)


async def reconcile(reconciler: ClusterIDMappingReconciler, api: RecordingApiClient) -> None:
    """Every mapping reconciled, the store then given what the server holds; twice, as the
    controller re-queues all mappings when one changes."""
    for _ in range(2):
        names = reconciler.cluster_id_mappings.store.keys()
        for name in names:
            await reconciler.reconcile(name)
        for name in names:
            reconciler.cluster_id_mappings.store.upsert(api.object(f"{CIDM_PATH}/{name}"))


def stored(reconciler: ClusterIDMappingReconciler, name: str) -> KubeObject:
    found = reconciler.cluster_id_mappings.store.get(name)
    assert found is not None
    return found


def conditions_of(obj: KubeObject) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}


def remapped(name: str, through: str, pool_id: int = 5) -> KubeObject:
    """A Ready VolumeHandleMapping of PV `name`, remapped through ClusterIDMapping `through`."""
    return volume_handle_mapping(
        name,
        handle("site-a"),
        newVolumeHandle=handle(LOCAL, pool_id),
        clusterID=LOCAL,
        pool=POOL,
        poolID=pool_id,
        imageName="csi-vol-x",
        clusterIDMappings=[through],
        conditions=[condition(True, "JournalRegenerated")],
    )


async def test_a_mapping_in_use_keeps_serving_through_a_later_conflict(
    api: RecordingApiClient,
) -> None:
    reconciler = cluster_id_mapping_reconciler(api)
    create(api, reconciler, cluster_id_mapping("first", "site-a", LOCAL, {"name": POOL}))
    reconciler.volumes.store.upsert(pv("pv-1", "site-a"))  # handle pool ID 2
    reconciler.volume_handle_mappings.store.upsert(remapped("pv-1", "first"))
    await reconcile(reconciler, api)
    first = stored(reconciler, "first")
    assert conditions_of(first)["Ready"] == ("True", "Mapped")
    learnt = first["status"]["rbdPools"]
    assert learnt == [
        {
            "name": POOL,
            "localPoolID": 5,
            "localPoolIDSource": "LocalCluster",
            "remotePoolID": 2,
            "remotePoolIDSource": "VolumeHandle",
        }
    ]

    # Added later: a mapping of the same pair whose spec gives the pool another remote ID. It
    # is compared with what `first` learnt (before, only specs were compared, and both were
    # rendered: "2":"5" and "7":"5").
    create(
        api,
        reconciler,
        cluster_id_mapping("second", "site-a", LOCAL, {"name": POOL, "siteAPoolID": 7}),
    )
    api.requests.clear()
    await reconcile(reconciler, api)
    first, second = stored(reconciler, "first"), stored(reconciler, "second")
    # `first` keeps serving pv-1: Ready, with the IDs it had, and the conflict on it.
    assert conditions_of(first)["Ready"] == ("True", "Conflicting")
    assert conditions_of(first)["Conflicting"] == ("True", "Disagrees")
    message = next(c["message"] for c in first["status"]["conditions"] if c["type"] == "Ready")
    assert "has ID 2 here but 7 in ClusterIDMapping second" in message
    assert "keeps serving the 1 volume(s) remapped through it" in message
    assert first["status"]["rbdPools"] == learnt
    # `second` served nothing: it is not used at all.
    assert conditions_of(second)["Ready"] == ("False", "Conflicting")
    # The conflict is still a Warning on `first` (and alerts, by its reason).
    warnings = {(e["involvedObject"]["name"], e["type"], e["reason"]) for e in api.events()}
    assert ("first", "Warning", "Conflicting") in warnings
    # ceph-csi's file keeps `first`'s entry, and only that one.
    rendered = json.loads(render_cluster_mapping([first, second]).text)
    assert [(e["clusterIDMapping"], e["RBDPoolIDMapping"]) for e in rendered] == [
        ({"site-a": LOCAL}, [{"2": "5"}])
    ]
    # The PV controller maps no new volume through it: a reason of its own, not retried.
    with pytest.raises(MappingConflicting) as refused:
        mapped_through(reconciler.cluster_id_mappings, "site-a", LOCAL)
    assert "ClusterIDMapping first" in str(refused.value) and not refused.value.retryable

    # Fixed: `second` agrees; both are Mapped and `first` learns again.
    create(
        api,
        reconciler,
        cluster_id_mapping("second", "site-a", LOCAL, {"name": POOL, "siteAPoolID": 2}),
    )
    await reconcile(reconciler, api)
    assert conditions_of(stored(reconciler, "first"))["Ready"] == ("True", "Mapped")
    assert conditions_of(stored(reconciler, "second"))["Ready"] == ("True", "Mapped")


async def test_a_conflict_before_any_volume_was_remapped_stops_both(
    api: RecordingApiClient,
) -> None:
    reconciler = cluster_id_mapping_reconciler(api)
    create(api, reconciler, cluster_id_mapping("first", "site-a", LOCAL, {"name": POOL}))
    await reconcile(reconciler, api)
    assert conditions_of(stored(reconciler, "first"))["Ready"] == ("True", "Mapped")
    create(
        api,
        reconciler,
        cluster_id_mapping("second", "site-a", LOCAL, {"name": POOL, "siteAPoolID": 7}),
    )
    reconciler.volumes.store.upsert(pv("pv-1", "site-a"))  # teaches `first` remote ID 2
    await reconcile(reconciler, api)
    for name in ("first", "second"):
        assert conditions_of(stored(reconciler, name))["Ready"] == ("False", "Conflicting")
    with pytest.raises(ClusterNotMapped) as refused:
        mapped_through(reconciler.cluster_id_mappings, "site-a", LOCAL)
    assert not isinstance(refused.value, MappingConflicting)


async def test_remote_ids_are_learnt_from_taken_pvs_only_and_kept_through_a_stray_one(
    api: RecordingApiClient,
) -> None:
    reconciler = cluster_id_mapping_reconciler(api)
    create(api, reconciler, cluster_id_mapping("m", "site-a", LOCAL, {"name": POOL}))
    unclaimed = pv("unclaimed", "site-a", volumeHandle=handle("site-a", 9))
    del unclaimed["spec"]["claimRef"]
    static = pv(
        "static",
        "site-a",
        volumeHandle=handle("site-a", 8),
        volumeAttributes={"pool": POOL, "staticVolume": "true"},
    )
    for obj in (unclaimed, static):
        reconciler.volumes.store.upsert(obj)
    await reconcile(reconciler, api)
    [entry] = stored(reconciler, "m")["status"]["rbdPools"]
    assert "remotePoolID" not in entry  # PVs the PV controller does not take teach nothing

    reconciler.volumes.store.upsert(pv("pv-1", "site-a"))  # pool ID 2, taken
    await reconcile(reconciler, api)
    [entry] = stored(reconciler, "m")["status"]["rbdPools"]
    assert (entry["remotePoolID"], entry["remotePoolIDSource"]) == (2, "VolumeHandle")
    assert conditions_of(stored(reconciler, "m"))["PoolIDsAmbiguous"] == ("False", "Unambiguous")

    # A stray PV with another ID: the learnt one stays (in the status and the rendered file),
    # and the ambiguity is a condition.
    stray = pv(
        "stray", "site-a", volumeHandle=handle("site-a", 9, "1c23de1c-18fb-11eb-a903-0242ac110005")
    )
    reconciler.volumes.store.upsert(stray)
    await reconcile(reconciler, api)
    m = stored(reconciler, "m")
    [entry] = m["status"]["rbdPools"]
    assert entry["remotePoolID"] == 2
    assert conditions_of(m)["PoolIDsAmbiguous"] == ("True", "SeveralPoolIDs")
    note = next(c["message"] for c in m["status"]["conditions"] if c["type"] == "PoolIDsAmbiguous")
    assert "also carry remote pool ID(s) 9; 2, learnt first, is kept" in note
    # Even with the PV it was learnt from gone.
    reconciler.volumes.store.delete("pv-1")
    await reconcile(reconciler, api)
    assert stored(reconciler, "m")["status"]["rbdPools"][0]["remotePoolID"] == 2

    # A human decides: an ID in the spec wins, and the ambiguity is theirs to have settled.
    create(
        api,
        reconciler,
        {
            **cluster_id_mapping("m", "site-a", LOCAL, {"name": POOL, "siteAPoolID": 9}),
            "status": stored(reconciler, "m")["status"],
        },
    )
    await reconcile(reconciler, api)
    [entry] = stored(reconciler, "m")["status"]["rbdPools"]
    assert (entry["remotePoolID"], entry["remotePoolIDSource"]) == (9, "Spec")


async def test_a_new_mapping_with_several_ids_guesses_none(api: RecordingApiClient) -> None:
    reconciler = cluster_id_mapping_reconciler(api)
    create(api, reconciler, cluster_id_mapping("m", "site-a", LOCAL, {"name": POOL}))
    reconciler.volumes.store.upsert(pv("pv-1", "site-a"))
    other = "1c23de1c-18fb-11eb-a903-0242ac110005"
    reconciler.volumes.store.upsert(pv("pv-2", "site-a", volumeHandle=handle("site-a", 9, other)))
    await reconcile(reconciler, api)
    m = stored(reconciler, "m")
    assert "remotePoolID" not in m["status"]["rbdPools"][0]
    assert conditions_of(m)["PoolIDsAmbiguous"] == ("True", "SeveralPoolIDs")


def test_learnt_ids_count_as_the_spec_does_when_mappings_are_compared() -> None:
    learnt = cluster_id_mapping(
        "learnt",
        "site-a",
        LOCAL,
        {"name": POOL},
        localClusterID=LOCAL,
        remoteClusterID="site-a",
        rbdPools=[{"name": POOL, "localPoolID": 5, "remotePoolID": 1}],
    )
    effective = effective_spec(learnt)
    assert [(p.site_a, p.site_b) for p in effective.pools] == [(1, 5)]
    # Either way round: siteA is the local side here.
    flipped = cluster_id_mapping(
        "flipped",
        LOCAL,
        "site-a",
        {"name": POOL},
        localClusterID=LOCAL,
        remoteClusterID="site-a",
        rbdPools=[{"name": POOL, "localPoolID": 5, "remotePoolID": 1}],
    )
    assert [(p.site_a, p.site_b) for p in effective_spec(flipped).pools] == [(5, 1)]


def test_dry_run_evaluates_a_mapping_without_status_in_memory(api: RecordingApiClient) -> None:
    informer = cluster_id_mappings_informer(api)
    informer.store.upsert(cluster_id_mapping("fresh", "site-a", LOCAL, {"name": POOL}))
    with pytest.raises(ClusterNotMapped):  # its status would say; there is none yet
        mapped_through(informer, "site-a", LOCAL)
    assert mapped_through(informer, "site-a", LOCAL, in_memory=True) == ["fresh"]
    # One that conflicts is not used in memory either.
    informer.store.upsert(
        cluster_id_mapping("other", "site-a", LOCAL, {"name": POOL, "siteAPoolID": 3})
    )
    informer.store.upsert(
        cluster_id_mapping("fresh", "site-a", LOCAL, {"name": POOL, "siteAPoolID": 4})
    )
    with pytest.raises(ClusterNotMapped, match="Conflicting"):
        mapped_through(informer, "site-a", LOCAL, in_memory=True)


def test_a_mapping_naming_neither_site_is_not_used_in_memory(api: RecordingApiClient) -> None:
    informer = cluster_id_mappings_informer(api)
    informer.store.upsert(cluster_id_mapping("x", "site-a", "site-x", {"name": POOL}))
    with pytest.raises(ClusterNotMapped, match="neither side"):
        mapped_through(informer, "site-a", LOCAL, in_memory=True)
