"""The sandbox's control plane is a real one: these are the behaviours later tests rely on."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes_asyncio import client as async_client
from kubernetes_asyncio import config as async_config
from kubernetes_asyncio import watch as async_watch
from kubernetes_asyncio.client.exceptions import ApiException as AsyncApiException

from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.errors import DaemonFailed
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox
from reconciler.sandbox.process import pid_alive
from reconciler.sandbox.site import kubectl
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

DEADLINE = 30.0

TEST_CRD_GROUP = "sandbox.rbd-mirror-reconciler.test"


def client_for(kubeconfig: Path) -> kube_client.ApiClient:
    # The loader is untyped upstream; loading the file is what these tests check.
    api: kube_client.ApiClient = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


@pytest.fixture
def admin(kube: KubeCluster) -> Iterator[kube_client.ApiClient]:
    with client_for(kube.kubeconfig) as api:
        yield api


@pytest.fixture
def namespace(admin: kube_client.ApiClient) -> str:
    # The namespace controller is not running, so namespaces are never cleaned up; unique
    # names keep tests independent within one session.
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube_client.CoreV1Api(admin).create_namespace(
        kube_client.V1Namespace(metadata=kube_client.V1ObjectMeta(name=name))
    )
    return name


@pytest.mark.owns_apiserver
def test_warm_start_time_is_within_bounds(kube: KubeSandbox) -> None:
    # The `kube` fixture prints the figure; the goal is < 15 s. The bound here is generous
    # because a shared 2-core machine can be busy.
    assert 0 < kube.start_seconds < 60


def test_kubectl_readyz(kube: KubeCluster) -> None:
    done = kubectl(kube, "get", "--raw", "/readyz", check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_persistent_volume_with_csi_source_round_trips(admin: kube_client.ApiClient) -> None:
    core = kube_client.CoreV1Api(admin)
    name = f"pv-{uuid.uuid4().hex[:8]}"
    volume_handle = "0001-0009-rook-ceph-0000000000000002-4e8a5c9f-0000-0000-0000-000000000001"
    core.create_persistent_volume(
        kube_client.V1PersistentVolume.model_validate(
            {
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "csi": {
                        "driver": "rook-ceph.rbd.csi.ceph.com",
                        "volumeHandle": volume_handle,
                        "volumeAttributes": {"pool": "replicapool", "imageName": "csi-vol-1"},
                    },
                },
            }
        )
    )
    read_back = core.read_persistent_volume(name)
    assert read_back.spec is not None
    assert read_back.spec.csi is not None
    assert read_back.spec.csi.driver == "rook-ceph.rbd.csi.ceph.com"
    assert read_back.spec.csi.volume_handle == volume_handle
    assert read_back.spec.csi.volume_attributes == {"pool": "replicapool", "imageName": "csi-vol-1"}


def test_crd_schema_rejects_invalid_custom_resource(
    admin: kube_client.ApiClient, namespace: str
) -> None:
    extensions = kube_client.ApiextensionsV1Api(admin)
    plural = f"gadgets{uuid.uuid4().hex[:6]}"
    crd_name = f"{plural}.{TEST_CRD_GROUP}"
    extensions.create_custom_resource_definition(
        kube_client.V1CustomResourceDefinition.model_validate(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": crd_name},
                "spec": {
                    "group": TEST_CRD_GROUP,
                    "scope": "Namespaced",
                    "names": {"plural": plural, "singular": plural[:-1], "kind": "Gadget"},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "spec": {
                                            "type": "object",
                                            "required": ["size"],
                                            "properties": {
                                                "size": {"type": "integer", "minimum": 1}
                                            },
                                        }
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    )

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(crd_name)
        conditions = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, DEADLINE, f"CRD {crd_name} to be Established", interval=0.1)

    custom = kube_client.CustomObjectsApi(admin)

    def create(name: str, spec: dict[str, Any]) -> Any:
        body = {"apiVersion": f"{TEST_CRD_GROUP}/v1", "kind": "Gadget", "metadata": {"name": name}}
        return custom.create_namespaced_custom_object(
            TEST_CRD_GROUP, "v1", namespace, plural, {**body, "spec": spec}
        )

    # Discovery of a just-established CRD can lag a moment behind the condition.
    wait_for(lambda: _succeeds(lambda: create("valid", {"size": 3})), DEADLINE, "a valid Gadget")
    with pytest.raises(ApiException) as rejected:
        create("invalid", {"size": 0})
    assert rejected.value.status == 422
    assert "spec.size" in str(rejected.value.body)


def _succeeds(action: Callable[[], object]) -> bool:
    try:
        action()
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def test_rbac_is_enforced_for_service_accounts(
    kube: KubeCluster, admin: kube_client.ApiClient, namespace: str
) -> None:
    kubeconfig = kube.service_account_kubeconfig(namespace, "no-grants-yet")
    with client_for(kubeconfig) as sa_client:
        as_service_account = kube_client.CoreV1Api(sa_client)
        with pytest.raises(ApiException) as denied:
            as_service_account.list_namespaced_config_map(namespace)
        assert denied.value.status == 403

        rbac = kube_client.RbacAuthorizationV1Api(admin)
        rbac.create_namespaced_role(
            namespace,
            kube_client.V1Role.model_validate(
                {
                    "metadata": {"name": "read-configmaps"},
                    "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
                }
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            kube_client.V1RoleBinding.model_validate(
                {
                    "metadata": {"name": "read-configmaps"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "read-configmaps",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "no-grants-yet", "namespace": namespace}
                    ],
                }
            ),
        )

        def allowed() -> bool:
            try:
                as_service_account.list_namespaced_config_map(namespace)
            except ApiException as err:
                if err.status == 403:  # the authorizer's informer has not seen the binding yet
                    return False
                raise
            return True

        wait_for(allowed, DEADLINE, "the RoleBinding to take effect", interval=0.1)
        # The grant is exactly what was given: other verbs and resources stay forbidden.
        with pytest.raises(ApiException) as still_denied:
            as_service_account.list_namespaced_secret(namespace)
        assert still_denied.value.status == 403


def test_owner_deletion_cascades_to_dependents(
    admin: kube_client.ApiClient, namespace: str
) -> None:
    core = kube_client.CoreV1Api(admin)
    owner_name = f"pv-owner-{uuid.uuid4().hex[:8]}"
    owner = core.create_persistent_volume(
        kube_client.V1PersistentVolume.model_validate(
            {
                "metadata": {"name": owner_name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "csi": {"driver": "rook-ceph.rbd.csi.ceph.com", "volumeHandle": owner_name},
                },
            }
        )
    )
    assert owner.metadata is not None
    core.create_namespaced_config_map(
        namespace,
        kube_client.V1ConfigMap.model_validate(
            {
                "metadata": {
                    "name": "owned-by-pv",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "PersistentVolume",
                            "name": owner_name,
                            "uid": owner.metadata.uid,
                        }
                    ],
                },
                "data": {"volumeHandle": owner_name},
            }
        ),
    )
    core.delete_persistent_volume(owner_name, propagation_policy="Background")

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned-by-pv", namespace)
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    wait_for(
        dependent_gone,
        DEADLINE,
        "the garbage collector to delete the ConfigMap owned by the PV",
        interval=0.1,
    )


def test_pv_binder_binds_a_pre_bound_claim(admin: kube_client.ApiClient, namespace: str) -> None:
    core = kube_client.CoreV1Api(admin)
    pv_name = f"pv-static-{uuid.uuid4().hex[:8]}"
    core.create_persistent_volume(
        kube_client.V1PersistentVolume.model_validate(
            {
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "csi": {"driver": "rook-ceph.rbd.csi.ceph.com", "volumeHandle": pv_name},
                },
            }
        )
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        kube_client.V1PersistentVolumeClaim.model_validate(
            {
                "metadata": {"name": "claim"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ),
    )

    def bound() -> bool:
        claim = core.read_namespaced_persistent_volume_claim("claim", namespace)
        return claim.status is not None and claim.status.phase == "Bound"

    wait_for(bound, DEADLINE, f"the PV binder to bind claim to {pv_name}", interval=0.2)


@pytest.mark.owns_apiserver
def test_failed_start_leaves_nothing_running(kube: KubeSandbox, tmp_path: Path) -> None:
    """A control plane whose API server cannot start raises a named error and stops etcd."""
    broken = KubeBinaries(
        etcd=kube.binaries.etcd,
        kube_apiserver=Path("/bin/false"),  # exits at once, as a crashing build would
        kube_controller_manager=kube.binaries.kube_controller_manager,
    )
    workdir = tmp_path / "broken"
    with pytest.raises(DaemonFailed) as failed:
        KubeSandbox(workdir, broken).start()
    assert failed.value.daemon == "kube-apiserver"
    assert failed.value.log_file == workdir / "logs" / "kube-apiserver.log"
    assert (workdir / "logs" / "etcd.log").exists(), "etcd should have been started first"
    assert _processes_mentioning(workdir) == []


def _processes_mentioning(path: Path) -> list[int]:
    """PIDs whose command line names `path`: a daemon of that sandbox still running."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


@pytest.mark.owns_apiserver
async def test_watch_survives_apiserver_restart(kube: KubeSandbox, namespace: str) -> None:
    """An informer-style client keeps an exact view across an API server + etcd restart.

    The client lists, then watches from the list's resourceVersion; when the stream breaks it
    resumes from the last resourceVersion seen, and on 410 Gone (the restarted server's watch
    cache may start past it) it relists, as client-go's reflector does. Because etcd keeps its
    data dir, objects written before, during and after the restart are all there.
    """
    api_client = await async_config.new_client_from_config(config_file=str(kube.kubeconfig))
    async with api_client:
        core = async_client.CoreV1Api(api_client)
        await core.create_namespaced_config_map(namespace, _config_map("before-restart"))
        view = _InformerView(core, namespace)
        await view.relist()
        watcher = asyncio.create_task(view.watch_forever())
        try:
            await core.create_namespaced_config_map(namespace, _config_map("during-watch"))
            await view.wait_for_names({"before-restart", "during-watch"})
            relists_before_restart = view.relists

            restart_seconds = await asyncio.to_thread(kube.restart_apiserver)
            print(f"kube-apiserver + etcd restart took {restart_seconds:.1f} s")

            await core.create_namespaced_config_map(namespace, _config_map("after-restart"))
            await view.wait_for_names({"before-restart", "during-watch", "after-restart"})
            assert view.stream_breaks >= 1, "the watch never noticed the restart"
            listed = await core.list_namespaced_config_map(namespace)
            assert {cm.metadata.name for cm in listed.items} == set(view.objects)
            print(
                f"watch resumed after {view.stream_breaks} broken stream(s), "
                f"{view.relists - relists_before_restart} relist(s) on 410 Gone"
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


class _InformerView:
    """The name -> resourceVersion view an informer would keep of one namespace's ConfigMaps."""

    def __init__(self, core: async_client.CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.objects: dict[str, str] = {}
        self.resource_version = ""
        self.stream_breaks = 0
        self.relists = 0
        self.changed = asyncio.Event()

    async def relist(self) -> None:
        listed = await self.core.list_namespaced_config_map(self.namespace)
        self.objects = {cm.metadata.name: cm.metadata.resource_version for cm in listed.items}
        self.resource_version = listed.metadata.resource_version
        self.changed.set()

    async def watch_forever(self) -> None:
        while True:
            try:
                stream = async_watch.Watch().stream(
                    self.core.list_namespaced_config_map,
                    self.namespace,
                    resource_version=self.resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=60,
                )
                async with stream:
                    async for event in stream:
                        self._apply(event["type"], event["raw_object"])
            except AsyncApiException as err:
                if err.status != 410:
                    raise
                self.relists += 1
                await self._relist_when_up()
                continue
            except (TimeoutError, aiohttp.ClientError):
                # The server is down: back off briefly, as a reflector would.
                await asyncio.sleep(0.2)
            self.stream_breaks += 1

    async def _relist_when_up(self) -> None:
        while True:
            try:
                await self.relist()
                return
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.2)

    def _apply(self, event_type: str, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        self.resource_version = metadata["resourceVersion"]
        if event_type == "DELETED":
            self.objects.pop(metadata["name"], None)
        elif event_type in ("ADDED", "MODIFIED"):
            self.objects[metadata["name"]] = metadata["resourceVersion"]
        self.changed.set()

    async def wait_for_names(self, names: set[str]) -> None:
        async with asyncio.timeout(DEADLINE):
            while set(self.objects) != names:
                self.changed.clear()
                await self.changed.wait()


def _config_map(name: str) -> async_client.V1ConfigMap:
    return async_client.V1ConfigMap(metadata=async_client.V1ObjectMeta(name=name))
