"""The panel's state machine, without pins: events and times in, one state out."""

from __future__ import annotations

import pytest

from gateway.events import (
    ButtonReleased,
    ButtonStuck,
    DeviceFailing,
    DeviceRecovered,
    DiskFull,
    DiskOk,
    Event,
    HubStarted,
    Identify,
    PublishRefused,
    ReadingDelivered,
    ReadingsConfirmed,
    ReadingsDropped,
    ReadingStored,
    UplinkDown,
    UplinkUp,
    WindowClosed,
    WindowOpened,
)
from gateway.panel.states import PRIORITY, PanelState, PanelStateMachine, StateTimings

S = PanelState
T = StateTimings(
    got_it_s=1.4,
    sent_s=10.0,
    stored_later_s=10.0,
    send_wait_s=30.0,
    help_after_failures=3,
    offline_help_s=3600.0,
)


def machine(*events: Event, up: bool = True) -> PanelStateMachine:
    m = PanelStateMachine(T, now=0.0)
    m.handle(HubStarted(), 0.0)
    if up:
        m.handle(UplinkUp(), 0.0)
    for event in events:
        m.handle(event, 0.0)
    return m


def stored(rid: str = "r1", device: str = "bp-1") -> ReadingStored:
    return ReadingStored(device, rid, duplicate=False)


def test_priority_order_is_the_documented_one() -> None:
    assert [s.value for s in PRIORITY] == [
        "starting",
        "got it",
        "sent",
        "sent, outside your plan",
        "stored, will send later",
        "installer",
        "here I am",
        "needs help",
        "waiting for you",
        "measurement due",
        "ready",
    ]


def test_starting_until_the_hub_has_started() -> None:
    m = PanelStateMachine(T, now=0.0)
    m.handle(DiskFull(), 0.0)
    m.handle(WindowOpened("measure", 120), 0.0)
    assert m.state(0.0) is S.STARTING
    m.handle(HubStarted(), 1.0)
    assert m.state(1.0) is S.NEEDS_HELP


def test_ready_then_waiting_while_the_measure_window_is_open() -> None:
    m = machine()
    assert m.state(1.0) is S.READY
    m.handle(WindowOpened("measure", 120), 1.0)
    assert m.state(1.0) is S.WAITING
    m.handle(WindowClosed("measure"), 121.0)
    assert m.state(121.0) is S.READY


def test_got_it_then_sent_only_after_the_puback() -> None:
    m = machine(WindowOpened("measure", 120))
    m.handle(stored(), 5.0)
    assert m.state(5.0) is S.GOT_IT
    # A store alone never shows "sent": still "got it" long after the blinks.
    assert m.state(5.0 + 1.4 + 10) is S.GOT_IT
    m.handle(ReadingDelivered("bp-1", "r1"), 20.0)
    assert m.state(20.0) is S.SENT
    assert m.state(29.9) is S.SENT
    # The window stays open for drivers, but the patient is no longer awaited.
    assert m.state(30.0) is S.READY


def test_a_quick_puback_still_shows_got_it_first_for_one_cycle() -> None:
    m = machine()
    m.handle(stored(), 5.0)
    m.handle(ReadingDelivered("bp-1", "r1"), 5.01)
    assert m.state(5.02) is S.GOT_IT
    assert m.next_change(5.02) == pytest.approx(6.4)
    assert m.state(6.4) is S.SENT
    assert m.next_change(6.4) == pytest.approx(16.4)
    assert m.state(16.4) is S.READY


def test_delivery_of_another_reading_is_not_sent() -> None:
    m = machine()
    m.handle(stored("r1"), 1.0)
    m.handle(stored("r2"), 2.0)
    m.handle(ReadingDelivered("bp-1", "r1"), 3.5)
    assert m.state(3.5) is S.GOT_IT
    m.handle(ReadingDelivered("bp-1", "r2"), 4.0)
    assert m.state(4.0) is S.SENT


def confirming() -> PanelStateMachine:
    """A machine whose uplink says the backend confirms ([mqtt] confirm = true, issue 9)."""
    m = PanelStateMachine(T, now=0.0)
    m.handle(HubStarted(), 0.0)
    m.handle(UplinkUp(confirming=True), 0.0)
    return m


def test_with_confirm_a_puback_keeps_got_it_and_only_the_confirmation_is_sent() -> None:
    m = confirming()
    m.handle(stored("r1"), 5.0)
    m.handle(ReadingDelivered("bp-1", "r1"), 5.1)
    assert not m.changed_by_delivery("r1")  # the panel need not even look
    # Published, not yet confirmed: still "got it" ("sending") after the blinks.
    assert m.state(5.0 + 1.4 + 5) is S.GOT_IT
    m.handle(ReadingsConfirmed(("r0", "r2")), 12.0)  # others' confirmation: nothing
    assert m.state(12.0) is S.GOT_IT
    assert m.changed_by_confirmation(("r0", "r1"))
    m.handle(ReadingsConfirmed(("r0", "r1")), 12.5)
    assert m.state(12.5) is S.SENT
    assert m.state(22.4) is S.SENT
    assert m.state(22.5) is S.READY


def test_with_confirm_no_confirmation_in_time_is_stored_later_never_sent() -> None:
    m = confirming()
    m.handle(stored("r1"), 1.0)
    m.handle(ReadingDelivered("bp-1", "r1"), 1.1)
    assert m.state(30.9) is S.GOT_IT
    assert m.next_change(30.9) == pytest.approx(31.0)
    # send_wait_s without a confirmation: "stored, will send later", never "sent".
    for t in (31.0, 35.0, 40.9):
        assert m.state(t) is S.STORED_LATER
    assert m.state(41.0) is S.READY
    # The confirmation comes at last (republished after the timeout): now it is sent.
    m.handle(ReadingsConfirmed(("r1",)), 300.0)
    assert m.state(300.0) is S.SENT


def test_without_confirm_a_confirmation_changes_nothing() -> None:
    m = machine()
    m.handle(stored("r1"), 1.0)
    assert not m.changed_by_confirmation(("r1",))
    m.handle(ReadingsConfirmed(("r1",)), 3.0)
    assert m.state(3.0) is S.GOT_IT


def test_duplicate_store_changes_nothing() -> None:
    m = machine()
    m.handle(ReadingStored("bp-1", "r1", duplicate=True), 1.0)
    assert m.state(1.0) is S.READY


def test_stored_while_offline_is_stored_later_then_sent_when_it_goes() -> None:
    m = machine(up=False)
    m.handle(stored(), 1.0)
    assert m.state(1.0) is S.GOT_IT
    assert m.state(2.4) is S.STORED_LATER
    assert m.next_change(2.4) == pytest.approx(12.4)
    assert m.state(12.4) is S.READY
    m.handle(UplinkUp(), 100.0)
    m.handle(ReadingDelivered("bp-1", "r1"), 100.5)
    assert m.state(100.5) is S.SENT


def test_uplink_lost_before_the_puback_is_stored_later() -> None:
    m = machine()
    m.handle(stored(), 1.0)
    m.handle(UplinkDown("gone"), 5.0)
    assert m.state(5.0) is S.STORED_LATER
    assert m.state(14.9) is S.STORED_LATER
    assert m.state(15.0) is S.READY


def test_no_puback_within_send_wait_is_stored_later() -> None:
    m = machine()
    m.handle(stored(), 1.0)
    assert m.next_change(2.0) == pytest.approx(31.0)
    assert m.state(30.9) is S.GOT_IT
    assert m.state(31.0) is S.STORED_LATER
    assert m.state(41.0) is S.READY


def test_refused_publish_is_stored_later_and_needs_help_until_a_delivery() -> None:
    m = machine()
    m.handle(stored(), 1.0)
    m.handle(PublishRefused("bp-1", "Not authorized"), 1.1)
    assert m.state(2.4) is S.STORED_LATER
    assert m.state(12.4) is S.NEEDS_HELP
    m.handle(ReadingDelivered("bp-1", "r1"), 20.0)
    assert m.state(20.0) is S.SENT
    assert m.state(30.0) is S.READY


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([DiskFull()], "disk full"),
        ([ReadingsDropped(5)], "store full, dropping readings"),
        ([DeviceFailing("oxi-1", "x")] * 3, "device oxi-1 keeps failing"),
        ([ButtonStuck(30.0)], "button stuck"),
    ],
)
def test_needs_help_reasons(events: list[Event], reason: str) -> None:
    m = machine(*events)
    assert m.state(1.0) is S.NEEDS_HELP
    assert m.help_reasons(1.0) == [reason]


def test_needs_help_clears() -> None:
    m = machine(DiskFull(), ReadingsDropped(1), ButtonStuck(30.0), *[DeviceFailing("d", "x")] * 3)
    assert len(m.help_reasons(1.0)) == 4
    for event in (DiskOk(), ReadingDelivered("d", "old"), ButtonReleased(), DeviceRecovered("d")):
        m.handle(event, 1.0)
    assert m.state(1.0) is S.READY


def test_a_device_failing_twice_is_not_yet_help() -> None:
    m = machine(DeviceFailing("d", "x"), DeviceFailing("d", "x"))
    assert m.state(1.0) is S.READY
    m.handle(DeviceFailing("d", "x"), 2.0)
    assert m.state(2.0) is S.NEEDS_HELP


def test_offline_too_long_needs_help_by_time_alone() -> None:
    m = machine(up=False)
    assert m.state(3599.0) is S.READY
    assert m.next_change(3599.0) == pytest.approx(3600.0)
    assert m.state(3600.0) is S.NEEDS_HELP
    m.handle(UplinkUp(), 4000.0)
    assert m.state(4000.0) is S.READY


def test_overlaps_resolve_by_priority() -> None:
    # needs help outranks waiting and ready
    m = machine(WindowOpened("measure", 120), DiskFull())
    assert m.state(0.0) is S.NEEDS_HELP
    # installer outranks needs help
    m.handle(WindowOpened("pairing", 300), 0.0)
    assert m.state(0.0) is S.INSTALLER
    # a fresh reading's feedback outranks installer and needs help, for its time
    m.handle(DiskOk(), 0.0)
    m.handle(ReadingsDropped(1), 0.0)  # still needs help after the disk clears
    m.handle(stored(), 1.0)
    assert m.state(1.0) is S.GOT_IT
    m.handle(ReadingDelivered("bp-1", "r1"), 1.5)  # (also clears "dropping")
    m.handle(DeviceFailing("x", "e"), 2.0)
    m.handle(DeviceFailing("x", "e"), 2.0)
    m.handle(DeviceFailing("x", "e"), 2.0)
    assert m.state(5.0) is S.SENT
    assert m.state(12.4) is S.INSTALLER
    m.handle(WindowClosed("pairing"), 13.0)
    assert m.state(13.0) is S.NEEDS_HELP


def test_a_new_press_ends_the_last_readings_feedback() -> None:
    m = machine()
    m.handle(stored(), 1.0)
    m.handle(ReadingDelivered("bp-1", "r1"), 1.1)
    assert m.state(3.0) is S.SENT
    m.handle(WindowOpened("measure", 120), 3.0)
    assert m.state(3.0) is S.WAITING


def test_next_change_is_none_when_only_events_can_change_it() -> None:
    m = machine(WindowOpened("measure", 120))
    assert m.next_change(1.0) is None


def test_identify_shows_here_i_am_for_its_seconds_below_feedback_above_needs_help() -> None:
    m = machine(DiskFull())
    m.handle(Identify(30), 10.0)
    assert m.state(10.0) is S.IDENTIFY  # above needs help: the installer asked for it
    assert m.next_change(10.0) == 40.0
    m.handle(stored(), 11.0)
    assert m.state(11.0) is S.GOT_IT  # a measurement's feedback still comes first
    m.handle(ReadingDelivered("bp-1", "r1"), 12.0)
    assert m.state(22.0) is S.SENT
    assert m.state(22.5) is S.IDENTIFY
    assert m.state(39.9) is S.IDENTIFY
    assert m.state(40.0) is S.NEEDS_HELP
    m.handle(Identify(300), 50.0)
    m.handle(WindowOpened("pairing", 300), 51.0)
    assert m.state(51.0) is S.INSTALLER
    m.handle(WindowClosed("pairing"), 52.0)
    assert m.state(52.0) is S.IDENTIFY
    m.handle(Identify(0), 53.0)  # 0 ends it early
    assert m.state(53.0) is S.NEEDS_HELP


def test_a_flagged_reading_shows_outside_your_plan_only_once_sent_and_for_its_time() -> None:
    """Issue 10, care plan `show_on_panel`: never before the care team has it."""
    m = PanelStateMachine(T, now=0.0)
    m.handle(HubStarted(), 0.0)
    m.handle(UplinkUp(), 0.0)
    m.handle(ReadingStored("bp-1", "r1", duplicate=False, show_flag=True), 1.0)
    assert m.state(1.5) is S.GOT_IT  # kept, not yet sent: no message about it yet
    m.handle(ReadingDelivered("bp-1", "r1"), 2.0)
    assert m.state(2.3) is S.GOT_IT  # "got it" keeps its one cycle (1.4 s)
    assert m.state(2.5) is S.SENT_OUTSIDE_PLAN
    assert m.state(2.4 + T.outside_plan_s - 0.1) is S.SENT_OUTSIDE_PLAN
    assert m.state(2.4 + T.outside_plan_s + 0.1) is S.READY
    # An unflagged reading is plain "sent"; a new press ends the message at once.
    m.handle(ReadingStored("bp-1", "r2", duplicate=False, show_flag=True), 700.0)
    m.handle(ReadingDelivered("bp-1", "r2"), 700.1)
    assert m.state(702.0) is S.SENT_OUTSIDE_PLAN
    m.handle(WindowOpened("measure", 120), 703.0)
    assert m.state(703.0) is S.WAITING
    m.handle(ReadingStored("bp-1", "r3", duplicate=False), 704.0)
    m.handle(ReadingDelivered("bp-1", "r3"), 704.1)
    assert m.state(706.0) is S.SENT
