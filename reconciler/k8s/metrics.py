"""The runtime's own Prometheus metrics, under the names controller-runtime and client-go use so
existing dashboards work. Everything lives on one registry that the HTTP server exposes; every
label set is created (at 0) when its controller, queue or lease is set up, so series exist before
the first event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# client-go's workqueue buckets: 10 ns .. 10 s, a decade each.
QUEUE_BUCKETS = tuple(10.0**exponent for exponent in range(-8, 2))
# controller-runtime's reconcile_time buckets.
RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8,
    0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30,
    40, 50, 60,
)  # fmt: skip

RECONCILE_RESULTS = ("success", "error", "requeue", "requeue_after")


@dataclass(frozen=True)
class QueueMetrics:
    """One queue's children of the workqueue_* families."""

    depth: Gauge
    adds: Counter
    queue_duration: Histogram
    work_duration: Histogram
    unfinished_work: Gauge
    longest_running: Gauge
    retries: Counter


@dataclass(frozen=True)
class ControllerMetrics:
    """One controller's children of the controller_runtime_* families."""

    reconcile_total: dict[str, Counter]
    reconcile_errors: Counter
    terminal_errors: Counter
    reconcile_time: Histogram
    active_workers: Gauge
    max_concurrent: Gauge


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            ["controller", "result"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.terminal_errors = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ["controller"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            ["controller"],
            registry=r,
        )
        self.max_concurrent = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            ["controller"],
            registry=r,
        )
        self.leader_status = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease.",
            ["name"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "workqueue_depth", "Current depth of workqueue", ["name"], registry=r
        )
        self.queue_adds = Counter(
            "workqueue_adds_total",
            "Total number of adds handled by workqueue",
            ["name"],
            registry=r,
        )
        self.queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            ["name"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            ["name"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.unfinished_work = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration. Large values indicate stuck threads.",
            ["name"],
            registry=r,
        )
        self.longest_running = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            ["name"],
            registry=r,
        )
        self.queue_retries = Counter(
            "workqueue_retries_total",
            "Total number of retries handled by workqueue",
            ["name"],
            registry=r,
        )

    def for_queue(
        self,
        name: str,
        unfinished_work: Callable[[], float],
        longest_running: Callable[[], float],
    ) -> QueueMetrics:
        """The queue's children; the two gauges of in-flight work are computed at scrape time."""
        queue = QueueMetrics(
            depth=self.queue_depth.labels(name=name),
            adds=self.queue_adds.labels(name=name),
            queue_duration=self.queue_duration.labels(name=name),
            work_duration=self.work_duration.labels(name=name),
            unfinished_work=self.unfinished_work.labels(name=name),
            longest_running=self.longest_running.labels(name=name),
            retries=self.queue_retries.labels(name=name),
        )
        queue.unfinished_work.set_function(unfinished_work)
        queue.longest_running.set_function(longest_running)
        return queue

    def for_controller(self, name: str, max_concurrent: int) -> ControllerMetrics:
        controller = ControllerMetrics(
            reconcile_total={
                result: self.reconcile_total.labels(controller=name, result=result)
                for result in RECONCILE_RESULTS
            },
            reconcile_errors=self.reconcile_errors.labels(controller=name),
            terminal_errors=self.terminal_errors.labels(controller=name),
            reconcile_time=self.reconcile_time.labels(controller=name),
            active_workers=self.active_workers.labels(controller=name),
            max_concurrent=self.max_concurrent.labels(controller=name),
        )
        controller.max_concurrent.set(max_concurrent)
        return controller

    def for_lease(self, name: str) -> Gauge:
        gauge = self.leader_status.labels(name=name)
        gauge.set(0)
        return gauge
