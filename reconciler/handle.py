"""ceph-csi volume handles (CSI volume IDs), encoding version 1.

    0001-0009-rook-ceph-0000000000000002-0c23de1c-18fb-11eb-a903-0242ac110005
    ver  len  clusterID pool ID (int64)  object UUID (36 chars)

The clusterID is sliced by its length field, so it may itself contain `-`. Lengths are in bytes,
as ceph-csi (Go) counts them. Beyond what ceph-csi checks when decoding, the separators and the
version must be right too: a handle that is off there was not made by ceph-csi.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reconciler.errors import InvalidHandle

ENCODING_VERSION = 1
#: version(4) + '-' + length(4) + '-' + '-' + pool(16) + '-' + uuid(36): all but the clusterID.
FIXED_LENGTH = 64
MAX_LENGTH = 128
UUID_LENGTH = 36
DEFAULT_IMAGE_PREFIX = "csi-vol-"

_HEX = re.compile(rb"[0-9a-fA-F]+")
_UINT64 = 1 << 64


@dataclass(frozen=True)
class VolumeHandle:
    cluster_id: str
    pool_id: int
    object_uuid: str
    version: int = ENCODING_VERSION

    def encode(self) -> str:
        cluster = self.cluster_id.encode()
        if FIXED_LENGTH + len(cluster) > MAX_LENGTH:
            raise InvalidHandle(
                self._draft(),
                f"clusterID is {len(cluster)} bytes; at most {MAX_LENGTH - FIXED_LENGTH} fit",
            )
        if len(self.object_uuid.encode()) != UUID_LENGTH:
            raise InvalidHandle(self._draft(), f"object UUID must be {UUID_LENGTH} characters")
        if not -(1 << 63) <= self.pool_id < (1 << 63):
            raise InvalidHandle(self._draft(), f"pool ID {self.pool_id} is not an int64")
        return "-".join(
            (
                f"{self.version:04x}",
                f"{len(cluster):04x}",
                self.cluster_id,
                f"{self.pool_id % _UINT64:016x}",
                self.object_uuid,
            )
        )

    def _draft(self) -> str:
        return f"{self.cluster_id}/{self.pool_id}/{self.object_uuid}"

    def image_name(self, prefix: str = DEFAULT_IMAGE_PREFIX) -> str:
        return prefix + self.object_uuid

    @classmethod
    def decode(cls, handle: str) -> VolumeHandle:
        raw = handle.encode()

        def fail(problem: str) -> InvalidHandle:
            return InvalidHandle(handle, problem)

        def hex_field(start: int, width: int, name: str) -> int:
            field = raw[start : start + width]
            if len(field) != width or not _HEX.fullmatch(field):
                raise fail(f"{name} at offset {start} must be {width} hex digits, got {field!r}")
            return int(field, 16)

        def separator(at: int, after: str) -> None:
            if raw[at : at + 1] != b"-":
                raise fail(f"expected '-' after the {after} at offset {at}")

        if len(raw) < FIXED_LENGTH:
            raise fail(f"{len(raw)} bytes is shorter than the {FIXED_LENGTH}-byte minimum")
        if len(raw) > MAX_LENGTH:
            raise fail(f"{len(raw)} bytes is longer than the {MAX_LENGTH}-byte maximum")
        version = hex_field(0, 4, "encoding version")
        if version != ENCODING_VERSION:
            raise fail(f"encoding version {version} is not supported (only {ENCODING_VERSION})")
        separator(4, "encoding version")
        cluster_length = hex_field(5, 4, "clusterID length")
        separator(9, "clusterID length (4 hex digits)")
        pool_start = 10 + cluster_length + 1
        if len(raw) - pool_start < 16 + 1 + UUID_LENGTH:
            raise fail(f"too short for a {cluster_length}-byte clusterID, a pool ID and a UUID")
        try:
            cluster_id = raw[10 : 10 + cluster_length].decode()
        except UnicodeDecodeError as err:
            raise fail("the clusterID length splits a character") from err
        separator(pool_start - 1, "clusterID")
        pool = hex_field(pool_start, 16, "pool ID")
        separator(pool_start + 16, "pool ID")
        uuid_part = raw[pool_start + 17 :]
        if len(uuid_part) != UUID_LENGTH:
            raise fail(f"object UUID must be {UUID_LENGTH} characters, got {len(uuid_part)}")
        return cls(
            cluster_id=cluster_id,
            pool_id=pool - _UINT64 if pool >= 1 << 63 else pool,
            object_uuid=uuid_part.decode(),
            version=version,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "clusterID": self.cluster_id,
            "poolID": self.pool_id,
            "objectUUID": self.object_uuid,
        }
