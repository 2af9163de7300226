"""`preflight`: would a failover to this site work for each PV, and what would it lose.

checks    the run: inputs in, one VolumeReport per PV out (Ceph reads bounded per pool)
ceph      what it reads of Ceph: listings served view, whole directory reads, caps probe
mapping   ClusterIDMappings judged from their specs; ceph-csi's files (missing_entries)
verdicts  the image: present, mirrored, replaying, snapshot age
report    the table, the JSON and the summary line
"""
