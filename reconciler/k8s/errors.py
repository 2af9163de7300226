"""Errors of the runtime.

K8sRuntimeError
+-- QueueShutDown        get() on a queue that is shutting down: a worker's cue to exit
+-- WatchExpired         the watch asked for a resourceVersion the server no longer has (410)
+-- WatchClosedEarly     a watch ended at once without any event (the server is refusing it)
+-- ApiStatusError       the API server answered a list/watch with an error status
+-- LeadershipLost       the lease could not be renewed within the renew deadline
TerminalError            raised by reconcile(): bad input only a human can fix; never retried
"""

from __future__ import annotations


class K8sRuntimeError(Exception):
    """Base of the errors the runtime raises itself."""


class QueueShutDown(K8sRuntimeError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"work queue {name!r} is shutting down")


class WatchExpired(K8sRuntimeError):
    def __init__(self, path: str, resource_version: str, message: str) -> None:
        self.path = path
        self.resource_version = resource_version
        super().__init__(f"{path}: resourceVersion {resource_version} expired (410): {message}")


class WatchClosedEarly(K8sRuntimeError):
    def __init__(self, path: str, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        super().__init__(f"{path}: watch closed after {seconds:.3f} s without any event")


class ApiStatusError(K8sRuntimeError):
    def __init__(self, path: str, status: int, message: str) -> None:
        self.path = path
        self.status = status
        self.message = message
        super().__init__(f"{path}: API server answered {status}: {message}")


class LeadershipLost(K8sRuntimeError):
    def __init__(self, lease: str, identity: str) -> None:
        self.lease = lease
        self.identity = identity
        super().__init__(f"{identity} lost lease {lease}: not renewed within the renew deadline")


class TerminalError(Exception):
    """Raised by a reconciler for a failure that retrying cannot fix (e.g. invalid spec).

    The controller counts it in controller_runtime_terminal_reconcile_errors_total, logs it and
    forgets the key; the key comes back only when the object changes again.
    """
