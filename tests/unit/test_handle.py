"""ceph-csi volume handle codec (encoding version 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reconciler.errors import InvalidHandle
from reconciler.handle import VolumeHandle
from tests.unit.conftest import UUID

DESIGN_DOC = "0001-0009-rook-ceph-0000000000000002-0c23de1c-18fb-11eb-a903-0242ac110005"


def test_design_doc_example_decodes() -> None:
    handle = VolumeHandle.decode(DESIGN_DOC)
    assert handle == VolumeHandle("rook-ceph", 2, UUID)
    assert handle.image_name() == f"csi-vol-{UUID}"


@pytest.mark.parametrize(
    ("cluster_id", "pool_id", "expected"),
    [
        ("rook-ceph", 2, DESIGN_DOC),
        ("site1-storage", 7, f"0001-000d-site1-storage-0000000000000007-{UUID}"),
        (
            "b9127830-b0cc-4e34-aa47-9d1a2e9949a8",
            0x1F,
            f"0001-0024-b9127830-b0cc-4e34-aa47-9d1a2e9949a8-000000000000001f-{UUID}",
        ),
        ("c", -1, f"0001-0001-c-ffffffffffffffff-{UUID}"),
    ],
)
def test_encode_matches_ceph_csi_and_round_trips(
    cluster_id: str, pool_id: int, expected: str
) -> None:
    handle = VolumeHandle(cluster_id, pool_id, UUID)
    assert handle.encode() == expected
    assert VolumeHandle.decode(expected) == handle


def test_cluster_id_up_to_64_bytes_fits_and_65_does_not() -> None:
    longest = VolumeHandle("x" * 64, 1, UUID).encode()
    assert len(longest) == 128
    assert VolumeHandle.decode(longest).cluster_id == "x" * 64
    with pytest.raises(InvalidHandle, match="clusterID is 65 bytes; at most 64 fit"):
        VolumeHandle("x" * 65, 1, UUID).encode()


def test_uuid_must_be_36_characters() -> None:
    with pytest.raises(InvalidHandle, match="object UUID must be 36 characters"):
        VolumeHandle("c", 1, UUID[:-1]).encode()


@pytest.mark.parametrize(
    ("handle", "problem"),
    [
        # The clusterid-mapping design doc's typo: a 5-digit length field.
        (f"0001-00013-site1-storage-0000000000000002-{UUID}", "after the clusterID length"),
        (DESIGN_DOC[:63], "shorter than the 64-byte minimum"),
        (DESIGN_DOC + "0", "object UUID must be 36 characters, got 37"),
        (DESIGN_DOC[:-1] + "-0", "object UUID must be 36 characters, got 37"),
        ("zz01" + DESIGN_DOC[4:], "encoding version at offset 0 must be 4 hex digits"),
        ("0002" + DESIGN_DOC[4:], "encoding version 2 is not supported"),
        ("0001-00g9" + DESIGN_DOC[9:], "clusterID length at offset 5 must be 4 hex digits"),
        (DESIGN_DOC.replace("0000000000000002", "000000000000000x"), "pool ID at offset 20"),
        (DESIGN_DOC.replace("-0000000000000002-", "-+000000000000002-"), "pool ID at offset 20"),
        (f"0001-0040-rook-ceph-0000000000000002-{UUID}", "too short for a 64-byte clusterID"),
        (f"0001-0008-rook-ceph-0000000000000002-{UUID}", "expected '-' after the clusterID"),
        ("x" * 129, "longer than the 128-byte maximum"),
    ],
)
def test_malformed_handles_are_rejected_with_the_reason(handle: str, problem: str) -> None:
    with pytest.raises(InvalidHandle, match=problem.replace("+", r"\+")) as failure:
        VolumeHandle.decode(handle)
    assert failure.value.handle == handle


def test_upper_case_hex_decodes_as_ceph_csi_does() -> None:
    handle = DESIGN_DOC.replace("0000000000000002", "000000000000000A")
    assert VolumeHandle.decode(handle).pool_id == 10


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "handle", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_decode_prints_json() -> None:
    done = cli("decode", DESIGN_DOC)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {
        "version": 1,
        "clusterID": "rook-ceph",
        "poolID": 2,
        "objectUUID": UUID,
    }


def test_cli_encode_prints_the_handle() -> None:
    done = cli("encode", "--cluster-id", "rook-ceph", "--pool-id", "2", "--uuid", UUID)
    assert (done.returncode, done.stdout) == (0, DESIGN_DOC + "\n")


def test_cli_bad_input_exits_2_with_one_line_and_no_stdout() -> None:
    done = cli("decode", "0001-00013-site1-storage")
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "shorter than the 64-byte minimum" in done.stderr
