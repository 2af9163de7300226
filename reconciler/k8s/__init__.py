"""A controller-runtime-style runtime on kubernetes-asyncio. It knows nothing of Ceph.

    api = await make_api_client(kubeconfig, ApiSettings(qps=20, burst=30))
    manager = Manager(api, ManagerSettings(leader_election=LeaderElectionSettings(ns, "me")))
    pvs = manager.informer(Resource("", "v1", "persistentvolumes"), indexers={...})

    async def reconcile(key: str) -> Result:     # level-triggered: read pvs.store, act
        ...

    manager.controller("pv", reconcile, settings=ControllerSettings(workers=4)).watch(pvs)
    await manager.run()                           # until SIGTERM; then drain, release, stop
    await api.close()

Layers import downwards only:

    manager
    controller, leader, server, informers, events, apply
    informer, workqueue, client, logs, conditions
    store, ratelimit, metrics, clock, errors, tasks
"""

from reconciler.k8s.client import (
    ApiSettings,
    RateLimitedApiClient,
    load_configuration,
    make_api_client,
    request_json,
)
from reconciler.k8s.clock import MONOTONIC, Clock, ManualClock
from reconciler.k8s.controller import (
    Controller,
    ControllerSettings,
    KeyMapper,
    Reconcile,
    Result,
)
from reconciler.k8s.errors import (
    ApiStatusError,
    K8sRuntimeError,
    LeadershipLost,
    QueueShutDown,
    TerminalError,
    WatchClosedEarly,
    WatchExpired,
)
from reconciler.k8s.informer import (
    Event,
    EventType,
    Handler,
    Informer,
    Resource,
    Transform,
    WatchSettings,
    strip_managed_fields,
)
from reconciler.k8s.informers import InformerSet
from reconciler.k8s.leader import LeaderElectionSettings, LeaderElector
from reconciler.k8s.logs import configure_logging, reconcile_context
from reconciler.k8s.manager import Manager, ManagerSettings
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.ratelimit import (
    ItemExponentialBackoff,
    JitteredBackoff,
    MaxOfRateLimiter,
    RateLimiter,
    TokenBucket,
    default_controller_rate_limiter,
)
from reconciler.k8s.server import HealthServer, ServerSettings
from reconciler.k8s.store import Indexer, KubeObject, Store, object_key, split_key
from reconciler.k8s.workqueue import WorkQueue

__all__ = [
    "MONOTONIC",
    "ApiSettings",
    "ApiStatusError",
    "Clock",
    "Controller",
    "ControllerSettings",
    "Event",
    "EventType",
    "Handler",
    "HealthServer",
    "Indexer",
    "Informer",
    "InformerSet",
    "ItemExponentialBackoff",
    "JitteredBackoff",
    "K8sRuntimeError",
    "KeyMapper",
    "KubeObject",
    "LeaderElectionSettings",
    "LeaderElector",
    "LeadershipLost",
    "Manager",
    "ManagerSettings",
    "ManualClock",
    "MaxOfRateLimiter",
    "QueueShutDown",
    "RateLimitedApiClient",
    "RateLimiter",
    "Reconcile",
    "Resource",
    "Result",
    "RuntimeMetrics",
    "ServerSettings",
    "Store",
    "TerminalError",
    "TokenBucket",
    "Transform",
    "WatchClosedEarly",
    "WatchExpired",
    "WatchSettings",
    "WorkQueue",
    "configure_logging",
    "default_controller_rate_limiter",
    "load_configuration",
    "make_api_client",
    "object_key",
    "reconcile_context",
    "request_json",
    "split_key",
    "strip_managed_fields",
]
