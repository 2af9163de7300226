"""The progress log of a burst: done/total, journals, rate and ETA, then one line when done."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from reconciler.controllers.progress import BurstProgress
from reconciler.k8s import ManualClock


def test_progress_says_done_of_total_the_rate_and_the_time_left() -> None:
    clock, state = ManualClock(), {"pending": 0, "ready": 5}
    registry = CollectorRegistry()
    progress = BurstProgress(
        lambda: state["pending"], lambda: state["ready"], registry=registry, clock=clock
    )
    assert progress.report() is None  # nothing pending, nothing was

    state["pending"] = 1000
    first = progress.report()
    assert first is not None
    assert (first["message"], first["done"], first["eta_seconds"]) == (
        "remapping progress",
        "5/1005",
        None,  # no rate yet
    )
    for _ in range(300):
        progress.journal_written()
    clock.advance(5)
    state.update(pending=600, ready=405)
    second = progress.report()
    assert second is not None
    assert second["done"] == "405/1005"
    assert second["journals"] == 300
    assert (second["rate_per_second"], second["eta_seconds"]) == (80.0, 8)
    assert registry.get_sample_value("rbd_mirror_reconciler_journals_written_total") == 300

    clock.advance(5)
    state.update(pending=0, ready=1005)
    done = progress.report()
    assert done is not None
    assert (done["message"], done["remapped"], done["seconds"]) == ("remapping done", 1000, 10.0)
    assert progress.report() is None
