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
#: What ceph-csi's CreateVolume wrote on the old site when the StorageClass named no type, so a PV
#: without `encryptionType` describes a block-encrypted volume.
DEFAULT_ENCRYPTION_TYPE = "block"
ENCRYPTION_TYPES = frozenset({"block", "file"})
#: The spellings Go's strconv.ParseBool accepts, which is how ceph-csi reads `encrypted`.
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


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

    def image_name(self, object_uuid: str) -> str:
        """`<volumeNamePrefix or csi-vol-><uuid>`, the name ceph-csi derives when it regenerates
        the journal; an `imageName` attribute that says otherwise makes the PV inconsistent."""
        derived = (self.attributes.get("volumeNamePrefix") or DEFAULT_IMAGE_PREFIX) + object_uuid
        stated = self.attributes.get("imageName")
        if stated is not None and stated != derived:
            raise InvalidVolume(
                self.pv_name,
                f"volumeAttributes.imageName {stated!r} differs from {derived!r}, the name "
                "ceph-csi derives from volumeNamePrefix (default csi-vol-) and the handle's UUID",
            )
        return derived

    def encryption(self) -> tuple[str, str]:
        """(KMS ID, encryption type) for the journal; empty strings for a plain volume."""
        if not self._encrypted():
            return "", ""
        kms_id = self.attributes.get("encryptionKMSID") or DEFAULT_KMS_ID
        kind = self.attributes.get("encryptionType", DEFAULT_ENCRYPTION_TYPE)
        if kind not in ENCRYPTION_TYPES:
            # An empty value included: ceph-csi's FetchEncryptionType calls it invalid.
            raise InvalidVolume(
                self.pv_name,
                f"volumeAttributes.encryptionType {kind!r} is not one of "
                f"{', '.join(sorted(ENCRYPTION_TYPES))}",
            )
        return kms_id, kind

    def _encrypted(self) -> bool:
        value = self.attributes.get("encrypted")
        if value is None:
            return False
        if value in _GO_TRUE:
            return True
        if value in _GO_FALSE:
            return False
        # ceph-csi fails such a volume rather than guess; so does regeneration.
        raise InvalidVolume(
            self.pv_name,
            f"volumeAttributes.encrypted {value!r} is not a boolean as Go's strconv.ParseBool "
            "reads one (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)",
        )

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
