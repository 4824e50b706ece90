"""The recovery decision rule (gateway/drivers/ble/recovery.py) on virtual time (issue 12)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jsonschema

from gateway.drivers.ble.recovery import (
    FAILURES_BEFORE_HELP,
    LADDER,
    MAX_INTERVAL_S,
    AdapterHealth,
    SilencePolicy,
    Step,
)
from gateway.events import BleAdapterFailing, BleAdapterOk, BleRecoveryStep, HubStarted, UplinkUp
from gateway.panel.states import PanelState, PanelStateMachine, StateTimings
from gateway.status import StatusTracker
from gateway.store import StoreStats

ROOT = Path(__file__).resolve().parents[2]


def silence(policy: SilencePolicy, until: float, tick: float = 5.0) -> list[tuple[float, Step]]:
    """Steps taken while nothing is heard from 0 to `until`, checked every `tick` s."""
    steps = []
    now = 0.0
    while now <= until:
        step = policy.due(now)
        if step is not None:
            steps.append((now, step))
        now += tick
    return steps


def test_two_hours_of_silence_take_steps_in_turn_further_apart() -> None:
    policy = SilencePolicy(stall_s=600.0)
    policy.heard(0.0)
    steps = silence(policy, 2 * 3600.0)
    assert [at for at, _ in steps] == [600, 1200, 1800, 3000, 4200, 5400]
    assert [step for _, step in steps] == [*LADDER, *LADDER]
    assert steps[0][1] is Step.RESTART_SCAN and steps[1][1] is Step.POWER_CYCLE


def test_a_day_of_silence_takes_at_most_one_step_an_hour_after_the_first_rounds() -> None:
    policy = SilencePolicy(stall_s=600.0)
    policy.heard(0.0)
    steps = silence(policy, 24 * 3600.0)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(steps)]
    assert max(gaps) == MAX_INTERVAL_S
    assert gaps[-5:] == [MAX_INTERVAL_S] * 5
    assert len(steps) < 30


def test_a_sign_of_life_starts_the_ladder_over() -> None:
    policy = SilencePolicy(stall_s=60.0)
    policy.heard(0.0)
    assert [s for _, s in silence(policy, 130.0)] == [Step.RESTART_SCAN, Step.POWER_CYCLE]
    policy.heard(131.0)
    assert policy.taken == 0
    assert policy.due(190.0) is None
    assert policy.due(191.0) is Step.RESTART_SCAN


def test_a_step_can_be_postponed_and_zero_means_never() -> None:
    policy = SilencePolicy(stall_s=60.0)
    policy.heard(0.0)
    policy.postpone(60.0, 10.0)  # a device is connected
    assert policy.due(65.0) is None
    assert policy.due(70.0) is Step.RESTART_SCAN
    never = SilencePolicy(stall_s=0.0)
    never.heard(0.0)
    assert silence(never, 86400.0) == []


def test_silence_alone_never_touches_the_adapters_health() -> None:
    health = AdapterHealth()
    policy = SilencePolicy(stall_s=600.0)
    policy.heard(0.0)
    for _, step in silence(policy, 2 * 3600.0):
        health.took(step)
    assert not health.failing and health.last_error is None
    assert health.steps == {"restart_scan": 2, "power_cycle": 2, "reset": 2}


def test_an_adapter_that_does_not_come_back_is_reported_once_and_cleared_once() -> None:
    health = AdapterHealth()
    # One retry first (bluetoothd may still be starting at boot).
    assert FAILURES_BEFORE_HELP == 2
    assert health.failed("power-on refused") is False
    assert health.failed("discovery cannot start") is True
    assert [health.failed("discovery cannot start") for _ in range(10)] == [False] * 10
    assert health.failing and health.last_error == "discovery cannot start"
    assert health.worked() is True
    assert health.worked() is False
    assert not health.failing and health.last_error is None
    # A single failure that the next try overcomes is no episode.
    assert health.failed("once") is False
    assert health.worked() is False


def test_the_panel_needs_help_for_a_failing_adapter_never_for_a_recovery_step() -> None:
    machine = PanelStateMachine(StateTimings(), now=0.0)
    machine.handle(HubStarted(), 0.0)
    machine.handle(UplinkUp(), 0.0)
    for n in range(30):
        machine.handle(BleRecoveryStep(LADDER[n % 3].value), float(n))
    assert machine.state(31.0) is PanelState.READY
    machine.handle(BleAdapterFailing("the Bluetooth adapter did not power on again"), 32.0)
    assert machine.state(33.0) is PanelState.NEEDS_HELP
    assert machine.help_reasons(33.0) == ["bluetooth adapter failing"]
    machine.handle(BleAdapterOk(), 34.0)
    assert machine.state(35.0) is PanelState.READY


def test_the_status_reports_steps_and_the_adapter_against_the_contract() -> None:
    schema = json.loads((ROOT / "contract/homehub_contract/schemas/status-1.json").read_text())
    tracker = StatusTracker(gateway_id="hub-1")
    stats = StoreStats(
        total=0, unsent=0, oldest_unsent_at=None, last_delivery_at=None, dropped=0, devices={}
    )
    assert "ble" not in tracker.document(stats)  # a hub whose BLE runtime never acted
    health = AdapterHealth()
    health.took(Step.RESTART_SCAN)
    health.took(Step.POWER_CYCLE)
    tracker.ble = health
    document = tracker.document(stats)
    jsonschema.validate(document, schema)
    assert document["ble"] == {
        "adapter": "ok",
        "last_error": None,
        "recoveries": {"power_cycle": 1, "restart_scan": 1},
    }
    health.failed("adapter gone")
    health.failed("adapter gone")
    document = tracker.document(stats)
    jsonschema.validate(document, schema)
    assert document["ble"]["adapter"] == "failing"
    assert document["ble"]["last_error"] == "adapter gone"
