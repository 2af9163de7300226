"""What a PV's volumeAttributes mean, read the way ceph-csi reads them."""

from __future__ import annotations

import pytest

from reconciler.errors import InvalidVolume
from reconciler.volume import CSIVolume
from tests.unit.conftest import UUID


def volume(**attributes: str) -> CSIVolume:
    return CSIVolume(
        pv_name="pv-1",
        driver="rbd.csi.ceph.com",
        volume_handle=f"0001-0009-rook-ceph-0000000000000002-{UUID}",
        attributes={"pool": "replicapool", **attributes},
    )


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_encrypted_true_as_go_parses_it(value: str) -> None:
    assert volume(encrypted=value).encryption() == ("default", "block")


@pytest.mark.parametrize("value", ["0", "f", "F", "FALSE", "false", "False"])
def test_encrypted_false_as_go_parses_it(value: str) -> None:
    assert volume(encrypted=value, encryptionKMSID="vault").encryption() == ("", "")


def test_no_encrypted_attribute_is_a_plain_volume() -> None:
    assert volume(encryptionType="file").encryption() == ("", "")


@pytest.mark.parametrize("value", ["", "yes", "on", "tRUE", " true", "2"])
def test_encrypted_that_go_cannot_parse_is_invalid(value: str) -> None:
    with pytest.raises(InvalidVolume) as invalid:
        volume(encrypted=value).encryption()
    assert invalid.value.volume == "pv-1"
    assert f"volumeAttributes.encrypted {value!r}" in invalid.value.problem


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, ("default", "block")),  # what CreateVolume wrote on the old site
        ({"encryptionType": "file"}, ("default", "file")),
        ({"encryptionType": "block", "encryptionKMSID": "vault"}, ("vault", "block")),
        ({"encryptionKMSID": ""}, ("default", "block")),
    ],
)
def test_encryption_kms_and_type(attributes: dict[str, str], expected: tuple[str, str]) -> None:
    assert volume(encrypted="true", **attributes).encryption() == expected


@pytest.mark.parametrize("kind", ["", "luks", "Block"])
def test_encryption_type_present_but_not_block_or_file_is_invalid(kind: str) -> None:
    with pytest.raises(InvalidVolume, match=f"encryptionType {kind!r} is not one of block, file"):
        volume(encrypted="true", encryptionType=kind).encryption()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, f"csi-vol-{UUID}"),
        ({"volumeNamePrefix": ""}, f"csi-vol-{UUID}"),
        ({"volumeNamePrefix": "team-a-"}, f"team-a-{UUID}"),
        ({"imageName": f"csi-vol-{UUID}"}, f"csi-vol-{UUID}"),
        ({"volumeNamePrefix": "team-a-", "imageName": f"team-a-{UUID}"}, f"team-a-{UUID}"),
    ],
)
def test_image_name_is_the_prefix_and_the_uuid(attributes: dict[str, str], expected: str) -> None:
    assert volume(**attributes).image_name(UUID) == expected


@pytest.mark.parametrize(
    ("attributes", "stated", "derived"),
    [
        ({"imageName": f"team-a-{UUID}"}, f"team-a-{UUID}", f"csi-vol-{UUID}"),
        (
            {"imageName": f"csi-vol-{UUID}", "volumeNamePrefix": "b-"},
            f"csi-vol-{UUID}",
            f"b-{UUID}",
        ),
        ({"imageName": "csi-vol-other"}, "csi-vol-other", f"csi-vol-{UUID}"),
        ({"imageName": ""}, "", f"csi-vol-{UUID}"),
    ],
)
def test_an_image_name_other_than_derived_is_invalid(
    attributes: dict[str, str], stated: str, derived: str
) -> None:
    with pytest.raises(InvalidVolume) as invalid:
        volume(**attributes).image_name(UUID)
    assert invalid.value.volume == "pv-1"
    assert f"imageName {stated!r} differs from {derived!r}" in invalid.value.problem
