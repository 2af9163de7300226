"""What the tests share: polling with deadlines and the ceph-csi stand-in."""
