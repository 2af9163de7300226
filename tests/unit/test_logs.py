"""JSON log lines carry the reconcile context, and only inside it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

from reconciler.k8s.logs import configure_logging, reconcile_context


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_line_is_json_with_the_reconcile_id_of_its_own_task() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test_logs.reconcile")
    logger.propagate = False
    configure_logging(logging.DEBUG, stream, logger)

    async def reconcile(key: str) -> str:
        with reconcile_context("volumes", key) as reconcile_id:
            logger.info("start", extra={"step": 1})
            await asyncio.sleep(0)  # interleave with the other reconcile
            logger.info("end")
            return reconcile_id

    first, second = await asyncio.gather(reconcile("ns/a"), reconcile("ns/b"))
    logger.warning("outside")

    records = lines(stream)
    assert len(records) == 5
    ids = {record["key"]: record["reconcile_id"] for record in records[:4]}
    assert ids == {"ns/a": first, "ns/b": second}
    assert first != second
    assert all(record["controller"] == "volumes" for record in records[:4])
    assert records[0]["message"] == "start" and records[0]["step"] == 1
    assert records[0]["level"] == "INFO" and records[0]["logger"] == "test_logs.reconcile"
    assert "timestamp" in records[0]
    assert "reconcile_id" not in records[4] and records[4]["level"] == "WARNING"
