"""The resolver: informers on VolumeHandleMappings, ClusterIDMappings and ceph-csi-config keep
the caches `resolution.resolve` reads, so resolving is a few dict lookups and never a request.

    async with Resolver(api_client, csi_config_namespace="ceph-csi") as resolver:
        volume = await resolver.resolve(old_handle, sync_timeout=10)

    with SyncResolver(kubeconfig, csi_config_namespace="ceph-csi") as resolver:  # threaded code
        volume = resolver.resolve(old_handle, sync_timeout=10)

Until every informer has listed, or while one has died, it answers ResolverUnavailable, never
VolumeNotFound: a CSI driver must not report a volume gone because its cache is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from types import TracebackType

from kubernetes_asyncio.client import ApiClient

from reconciler.csi.errors import ResolverUnavailable
from reconciler.csi.resolution import (
    HANDLE_INDEX,
    ClusterRoutes,
    LocalClusters,
    ResolvedVolume,
    index_trimmed_handle,
    resolve,
    trim_handle_mapping,
)
from reconciler.csiconfig import DEFAULT_CONFIGMAP
from reconciler.k8s import ApiSettings, Event, InformerSet, WatchSettings, make_api_client
from reconciler.kinds import CLUSTER_ID_MAPPINGS, CONFIG_MAPS, VOLUME_HANDLE_MAPPINGS

log = logging.getLogger(__name__)


class Resolver:
    """Resolves old volume handles to local volumes; `start` it (or `async with`), then `resolve`.

    The caller owns `api_client` and closes it after `close`.
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        csi_config_namespace: str,
        csi_config_name: str = DEFAULT_CONFIGMAP,
        csi_config_key: str = "config.json",
        watch_settings: WatchSettings | None = None,
    ) -> None:
        self.informers = InformerSet(api_client, watch_settings)
        self.volume_handle_mappings = self.informers.informer(
            VOLUME_HANDLE_MAPPINGS,
            indexers={HANDLE_INDEX: index_trimmed_handle},
            transform=trim_handle_mapping,
        )
        self.cluster_id_mappings = self.informers.informer(CLUSTER_ID_MAPPINGS)
        self.csi_config = self.informers.informer(
            CONFIG_MAPS,
            namespace=csi_config_namespace,
            field_selector=f"metadata.name={csi_config_name}",
        )
        self._csi_config_key = f"{csi_config_namespace}/{csi_config_name}"
        self._csi_config_source = f"ConfigMap {self._csi_config_key}"
        self._csi_config_data_key = csi_config_key
        # Derived on each change (both kinds are few objects), not on each resolve.
        self.cluster_routes = ClusterRoutes()
        self.local_clusters = LocalClusters.from_config_map(self._csi_config_source, None)
        self.cluster_id_mappings.add_handler(self._on_cluster_id_mapping)
        self.csi_config.add_handler(self._on_csi_config)

    async def __aenter__(self) -> Resolver:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        self.informers.start()

    async def close(self) -> None:
        await self.informers.stop()

    def has_synced(self) -> bool:
        """Every informer has listed and none has died."""
        return self.informers.has_synced()

    async def wait_synced(self) -> None:
        """Until every informer has listed (bound it with `asyncio.timeout`)."""
        await self.informers.wait_synced()

    async def resolve(self, handle: str, *, sync_timeout: float = 0.0) -> ResolvedVolume:
        """The local volume `handle` stands for (see reconciler.csi.resolution for the order).

        Waits up to `sync_timeout` seconds for the caches to sync, then raises
        ResolverUnavailable. Raises VolumeNotFound, LocalClusterNotConfigured or InvalidHandle.
        """
        if not self.has_synced():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sync_timeout):
                    await self.wait_synced()
        return self.resolve_cached(handle)

    def resolve_cached(self, handle: str) -> ResolvedVolume:
        """`resolve` without waiting, for callers on the resolver's event loop that cannot await.

        Not thread-safe: the informers change the caches on the loop (use SyncResolver).
        """
        if not self.has_synced():
            raise ResolverUnavailable(self.informers.waiting_for())
        return resolve(
            handle, self.volume_handle_mappings.store, self.cluster_routes, self.local_clusters
        )

    def _on_cluster_id_mapping(self, _: Event) -> None:
        self.cluster_routes = ClusterRoutes.from_objects(self.cluster_id_mappings.store.objects())

    def _on_csi_config(self, _: Event) -> None:
        self.local_clusters = LocalClusters.from_config_map(
            self._csi_config_source,
            self.csi_config.store.get(self._csi_config_key),
            self._csi_config_data_key,
        )


class SyncResolver:
    """A Resolver for threaded drivers: it runs on an event loop in a thread of its own, with an
    API client of its own, and `resolve` may be called from any thread."""

    def __init__(
        self,
        kubeconfig: Path | None = None,
        *,
        csi_config_namespace: str,
        csi_config_name: str = DEFAULT_CONFIGMAP,
        api_settings: ApiSettings | None = None,
        watch_settings: WatchSettings | None = None,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._api_settings = api_settings
        self._csi_config_namespace = csi_config_namespace
        self._csi_config_name = csi_config_name
        self._watch_settings = watch_settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rbd-mirror-resolver", daemon=True
        )
        self._api_client: ApiClient | None = None
        self._resolver: Resolver | None = None

    def __enter__(self) -> SyncResolver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        except BaseException:
            self.close()
            raise

    def resolve(self, handle: str, *, sync_timeout: float = 0.0) -> ResolvedVolume:
        """`Resolver.resolve`, from any thread."""
        if self._resolver is None:
            raise ResolverUnavailable(["start() to be called"])
        call = self._resolver.resolve(handle, sync_timeout=sync_timeout)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    async def _open(self) -> None:
        self._api_client = await make_api_client(self._kubeconfig, self._api_settings)
        self._resolver = Resolver(
            self._api_client,
            csi_config_namespace=self._csi_config_namespace,
            csi_config_name=self._csi_config_name,
            watch_settings=self._watch_settings,
        )
        self._resolver.start()

    async def _close(self) -> None:
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            await resolver.close()
        if self._api_client is not None:
            await self._api_client.close()
