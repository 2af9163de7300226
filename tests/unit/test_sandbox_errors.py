"""What a sandbox error quotes of a daemon's log: the line that says what to fix, even when the
daemon's shutdown logged more than the tail after it."""

from __future__ import annotations

from pathlib import Path

from reconciler.sandbox.errors import LOG_TAIL_LINES, DaemonFailed


def test_an_error_logged_before_the_tail_is_quoted_with_it(tmp_path: Path) -> None:
    log = tmp_path / "prometheus.log"
    cause = 'level=error msg="loading groups failed" err="/etc/rules/broken.yaml: parse error"'
    shutdown = [f"level=info msg=stopping part={i}" for i in range(LOG_TAIL_LINES + 3)]
    log.write_text("\n".join(["level=info msg=starting", cause, *shutdown]) + "\n")

    quoted = str(DaemonFailed("prometheus", log, "exited with status 1"))

    assert cause in quoted
    assert quoted.index(cause) < quoted.index(shutdown[-1])  # the cause first, then the tail
    assert shutdown[-LOG_TAIL_LINES] in quoted and shutdown[-LOG_TAIL_LINES - 1] not in quoted
    assert "level=info msg=starting" not in quoted


def test_a_short_log_is_quoted_whole(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    log.write_text("one\nerror: two\nthree\n")

    assert str(DaemonFailed("etcd", log, "not ready after 10 s")).endswith("one\nerror: two\nthree")
