"""A controller-runtime-style runtime on kubernetes-asyncio. It knows nothing of Ceph.

Layers import downwards only: manager > controller, leader, server > informer, workqueue,
client > store, ratelimit, metrics, clock, errors.
"""
