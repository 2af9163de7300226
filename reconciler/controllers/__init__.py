"""The controllers of `rbd-mirror-reconciler run`, on the runtime in reconciler.k8s.

volumes            PVs -> regenerated journal + VolumeHandleMapping
clusteridmapping   ClusterIDMapping status; ceph-csi's cluster-mapping.json
status, kinds      conditions, Events, server-side apply; API kinds and informer indexes
"""
