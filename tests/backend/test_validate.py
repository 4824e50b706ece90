"""validate.py: the fast validator agrees with the contract's jsonschema validator."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from homehub_backend.db import ReadingRow, RejectedRow, StatusRow
from homehub_backend.validate import Topics, classify
from homehub_contract import DRAFT_07, compiled_validator, load_schema, validator

from tests.backend.support import encode, reading_doc

# Keywords whose meaning is the same in draft-07 and 2020-12 (the draft-07 override is only
# safe while the contract's schemas use nothing else).
SAME_IN_BOTH = {
    "$schema", "$id", "title", "description", "type", "required", "properties", "const",
    "enum", "pattern", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems",
    "minimum", "maximum", "items", "additionalProperties", "format",
}  # fmt: skip

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
TOPICS = Topics("homehub")


def keywords(node: Any, inside_properties: bool = False) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if not inside_properties:
                found.add(key)
            found |= keywords(
                value, inside_properties=key in ("properties",) and not inside_properties
            )
    elif isinstance(node, list):
        for item in node:
            found |= keywords(item)
    return found


@pytest.mark.parametrize("name", ["reading-1", "status-1", "confirm-1"])
def test_the_contract_schemas_use_only_keywords_draft_07_shares(name: str) -> None:
    assert keywords(load_schema(name)) <= SAME_IN_BOTH
    assert DRAFT_07.startswith("http://json-schema.org/draft-07/")


def mutations() -> list[dict[str, Any]]:
    base = reading_doc("hub-a", 1)
    out = [base]

    def changed(path: list[Any], value: Any) -> dict[str, Any]:
        doc = copy.deepcopy(base)
        node = doc
        for part in path[:-1]:
            node = node[part]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return doc

    for key in base:
        out.append(changed([key], KeyError))
        out += [changed([key], v) for v in (None, 1, "x", [], {}, True, 1.5)]
    out += [
        changed(["values", 0, "value"], None),
        changed(["values", 0, "value"], "120"),
        changed(["values", 0, "mdc"], -1),
        changed(["values", 0, "mdc"], 2**32),
        changed(["values", 0, "code"], "PRESS"),
        changed(["values"], []),
        changed(["status"], ["a", "a"]),
        changed(["gateway"], "hub a"),
        changed(["device", "id"], "bp/1"),
        changed(["device", "driver"], ""),
        changed(["id"], "x" * 65),
        changed(["measured_at"], "2026-11-22T09:14:03"),
        changed(["measured_at"], "2026-11-22T09:14:03Z"),
        changed(["received_at"], "2026-11-22T08:14:05.123+01:00"),
        changed(["kind"], "weight"),
        changed(["extra"], {"ignored": True}),
    ]
    return out


def test_fast_and_contract_validators_agree_on_many_documents() -> None:
    fast = compiled_validator("reading-1")
    slow = validator("reading-1")
    docs = mutations()
    for doc in docs:
        try:
            fast(doc)
            fast_ok = True
        except Exception:
            fast_ok = False
        assert fast_ok == slow.is_valid(doc), json.dumps(doc)
    assert sum(1 for d in docs if slow.is_valid(d)) >= 5  # both verdicts were exercised


def test_classify_makes_a_typed_row_of_a_valid_reading() -> None:
    doc = reading_doc("hub-a", 3)
    row = classify(TOPICS, "homehub/hub-a/readings/bp-1", encode(doc), 65536, NOW)
    assert isinstance(row, ReadingRow)
    assert (row.id, row.gateway, row.device, row.kind) == (
        doc["id"],
        "hub-a",
        "bp-1",
        "blood_pressure",
    )
    assert row.measured_at == datetime(2026, 11, 22, 8, 0, 3, tzinfo=UTC)
    assert json.loads(row.payload) == doc


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("homehub/hub-a/readings/bp-1/extra", "device: the topic and the payload"),
        ("homehub/hub-a/other", "topic: not a readings or status topic"),
        ("elsewhere/hub-a/readings/bp-1", "topic: not a readings or status topic"),
    ],
)
def test_classify_rejects_wrong_topics(topic: str, reason: str) -> None:
    row = classify(TOPICS, topic, encode(reading_doc("hub-a", 1)), 65536, NOW)
    assert isinstance(row, RejectedRow) and row.reason.startswith(reason)


def test_classify_reads_a_status_and_its_failing_devices() -> None:
    doc = {
        "schema": "homehub.status/1",
        "gateway": "hub-a",
        "state": "online",
        "version": "0.1.0",
        "unsent": 4,
        "oldest_unsent_age_s": 12.5,
        "devices": {"b": {"state": "failing"}, "a": {"state": "failing"}, "c": {"state": "ok"}},
    }
    row = classify(TOPICS, "homehub/hub-a/status", encode(doc), 65536, NOW)
    assert isinstance(row, StatusRow)
    assert (row.online, row.unsent, row.oldest_unsent_age_s) == (True, 4, 12.5)
    assert row.failing_devices == ["a", "b"]
    assert row.received_at == NOW
    will = {"schema": "homehub.status/1", "gateway": "hub-a", "state": "offline", "version": "1"}
    row = classify(TOPICS, "homehub/hub-a/status", encode(will), 65536, NOW)
    assert isinstance(row, StatusRow) and not row.online and row.unsent is None
