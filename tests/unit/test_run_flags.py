"""`run`'s flags become one validated RunConfig before anything connects anywhere."""

from __future__ import annotations

import pytest

from reconciler.cli import build_parser
from reconciler.cli.run import RunConfig

REQUIRED = ["run", "--local-cluster-id", "site-b", "--csi-config-namespace", "ceph-csi"]


def config_of(*flags: str) -> RunConfig:
    return RunConfig.from_args(build_parser().parse_args([*REQUIRED, *flags]))


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--health-address", "localhost"], "is not HOST:PORT"),
        (["--health-address", "localhost:http"], "is not HOST:PORT"),
        (["--health-address", "localhost:70000"], "is not HOST:PORT"),
        (["--workers", "0"], "0 is not at least 1"),
        (["--workers", "two"], "'two' is not a whole number"),
        (["--kube-api-qps", "-1"], "-1 is not more than 0"),
        (["--ceph-timeout", "0"], "0 is not more than 0"),
        (["--leader-election-lease-duration", "0"], "0 is not more than 0"),
        (["--log-level", "chatty"], "invalid choice"),
    ],
)
def test_a_bad_flag_is_a_one_line_usage_error(
    flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*REQUIRED, *flags])
    assert exited.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and complaint in error_lines[0], error_lines


def test_defaults_come_from_run_config_and_the_identity_is_made_once() -> None:
    config = config_of()
    assert config.workers == RunConfig.workers
    assert config.health_address == RunConfig.health_address
    assert config.kube_api_qps == RunConfig.kube_api_qps
    settings = config.manager_settings()
    assert (settings.server.host, settings.server.port) == config.health_address
    assert settings.leader_election is None
    elected = config_of("--leader-elect").manager_settings().leader_election
    assert elected is not None and elected.namespace == "ceph-csi"
    # The Lease holder and every Event's reportingInstance are this one identity.
    leading = config_of("--leader-elect")
    assert leading.manager_settings().leader_election.identity == leading.identity  # type: ignore[union-attr]


def test_lease_timings_reach_the_elector_and_default_to_controller_runtimes() -> None:
    elected = config_of("--leader-elect").manager_settings().leader_election
    assert elected is not None
    assert (elected.lease_duration, elected.renew_deadline, elected.retry_period) == (15, 10, 2)
    short = config_of(
        "--leader-elect",
        "--leader-election-lease-duration", "4",
        "--leader-election-renew-deadline", "3",
        "--leader-election-retry-period", "0.5",
    ).manager_settings().leader_election  # fmt: skip
    assert short is not None
    assert (short.lease_duration, short.renew_deadline, short.retry_period) == (4, 3, 0.5)


def test_lease_timings_out_of_order_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        [*REQUIRED, "--leader-elect", "--leader-election-renew-deadline", "20"]
    )
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "need lease_duration > renew_deadline > retry_period" in err
    assert "15.0 / 20.0 / 2.0" in err


def test_a_lease_shorter_than_a_second_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """The Lease holds whole seconds: 0.4 would be written as 0, which the API server refuses."""
    args = build_parser().parse_args(
        [
            *REQUIRED,
            "--leader-elect",
            "--leader-election-lease-duration", "0.4",
            "--leader-election-renew-deadline", "0.3",
            "--leader-election-retry-period", "0.1",
        ]
    )  # fmt: skip
    assert args.func(args) == 2
    assert "need a lease duration of at least 1 s, got 0.4" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), (":9090", ("0.0.0.0", 9090)), ("[::1]:80", ("::1", 80))],
)
def test_health_addresses_parse(text: str, address: tuple[str, int]) -> None:
    assert config_of("--health-address", text).health_address == address


def test_help_groups_the_flags_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    shown = capsys.readouterr().out
    for group in ("Kubernetes:", "leader election:", "ceph-csi:", "Ceph:"):
        assert group in shown
    assert "(default: 16)" in shown
