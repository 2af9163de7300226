"""What a PersistentVolume says about its ceph-csi RBD volume, from the PV as plain data.

Plain dicts in, a typed value out: the same code serves PV files given to the CLI and PVs from the
API server, and nothing here talks to Kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import InvalidVolume
from reconciler.handle import DEFAULT_IMAGE_PREFIX

#: ceph-csi's default KMS ID when a volume is encrypted without naming one.
DEFAULT_KMS_ID = "default"
DEFAULT_ENCRYPTION_TYPE = "block"
ENCRYPTION_TYPES = frozenset({"block", "file"})


@dataclass(frozen=True)
class CSIVolume:
    pv_name: str
    driver: str
    volume_handle: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    claim_name: str = ""
    claim_namespace: str = ""
    #: (name, namespace) of the Secret with `userID`/`userKey`: controllerExpand, else nodeStage.
    secret_ref: tuple[str, str] | None = None

    @property
    def pool(self) -> str:
        pool = self.attributes.get("pool", "")
        if not pool:
            raise InvalidVolume(self.pv_name, "volumeAttributes.pool is missing or empty")
        return pool

    @property
    def journal_pool(self) -> str:
        return self.attributes.get("journalPool") or self.pool

    @property
    def static(self) -> bool:
        return self.attributes.get("staticVolume", "").lower() == "true"

    def image_name(self, object_uuid: str) -> str:
        name = self.attributes.get("imageName") or DEFAULT_IMAGE_PREFIX + object_uuid
        if not name.endswith(object_uuid):
            raise InvalidVolume(
                self.pv_name,
                f"volumeAttributes.imageName {name!r} does not end with the handle's "
                f"UUID {object_uuid}",
            )
        return name

    def encryption(self) -> tuple[str, str]:
        """(KMS ID, encryption type) for the journal; empty strings for a plain volume."""
        if self.attributes.get("encrypted", "").lower() != "true":
            return "", ""
        kms_id = self.attributes.get("encryptionKMSID") or DEFAULT_KMS_ID
        kind = self.attributes.get("encryptionType") or DEFAULT_ENCRYPTION_TYPE
        if kind not in ENCRYPTION_TYPES:
            raise InvalidVolume(
                self.pv_name,
                f"volumeAttributes.encryptionType {kind!r} is not one of "
                f"{', '.join(sorted(ENCRYPTION_TYPES))}",
            )
        return kms_id, kind

    @classmethod
    def from_pv(cls, pv: Mapping[str, Any]) -> CSIVolume:
        """From a PV manifest (as from YAML/JSON or the API server's JSON)."""
        name = str((pv.get("metadata") or {}).get("name") or "")
        if not name:
            raise InvalidVolume("<unnamed>", "metadata.name is missing")
        spec = pv.get("spec") or {}
        csi = spec.get("csi")
        if not isinstance(csi, Mapping):
            raise InvalidVolume(name, "spec.csi is missing: not a CSI volume")
        handle = csi.get("volumeHandle")
        if not isinstance(handle, str) or not handle:
            raise InvalidVolume(name, "spec.csi.volumeHandle is missing")
        attributes = csi.get("volumeAttributes") or {}
        if not isinstance(attributes, Mapping):
            raise InvalidVolume(name, "spec.csi.volumeAttributes must be a map of strings")
        claim = spec.get("claimRef") or {}
        secret_ref = None
        for ref_field in ("controllerExpandSecretRef", "nodeStageSecretRef"):
            ref = csi.get(ref_field)
            if isinstance(ref, Mapping) and ref.get("name"):
                secret_ref = (str(ref["name"]), str(ref.get("namespace") or ""))
                break
        return cls(
            pv_name=name,
            driver=str(csi.get("driver") or ""),
            volume_handle=handle,
            attributes={str(k): str(v) for k, v in attributes.items()},
            claim_name=str(claim.get("name") or ""),
            claim_namespace=str(claim.get("namespace") or ""),
            secret_ref=secret_ref,
        )
