"""Interned informer caches: equal objects, shared keys and short values."""

from __future__ import annotations

import json

from reconciler.k8s.intern import MAX_INTERNED, interned, interning


def test_objects_stay_equal_and_share_their_keys_and_short_values() -> None:
    text = json.dumps(
        {"metadata": {"name": "pv-1"}, "status": {"conditions": [{"type": "Ready"}], "n": 1}}
    )
    one, two = interned(json.loads(text)), interned(json.loads(text))
    assert one == json.loads(text)
    key_one = next(iter(one["status"]))
    key_two = next(iter(two["status"]))
    assert key_one is key_two
    assert one["status"]["conditions"][0]["type"] is two["status"]["conditions"][0]["type"]
    long = "x" * (MAX_INTERNED + 1)
    assert (
        interned(json.loads(json.dumps([long])))[0]
        is not interned(json.loads(json.dumps([long])))[0]
    )


def test_interning_wraps_a_transform() -> None:
    def keep_metadata(obj: dict[str, object]) -> dict[str, object]:
        return {"metadata": obj["metadata"]}

    transform = interning(keep_metadata)
    assert transform({"metadata": {"name": "a"}, "spec": {}}) == {"metadata": {"name": "a"}}
    assert interning()({"a": "b"}) == {"a": "b"}
