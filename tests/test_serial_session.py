"""Session aggregation: spot and continuous readings from sample streams, on a replayed clock."""

from __future__ import annotations

import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.drivers.serial.session import OxiSample, SessionAggregator

IN = OxiSample(97, 72)
OUT = OxiSample(None, None, finger_out=True)
SEARCHING = OxiSample(None, None)


def play(agg: SessionAggregator, timeline: list[tuple[float, OxiSample]]):  # type: ignore[no-untyped-def]
    out = []
    for t, sample in timeline:
        out.extend(agg.feed(t, sample))
    return out


def steady(start: float, seconds: float, hz: float, spo2: list[int], pulse: list[int]):  # type: ignore[no-untyped-def]
    n = int(seconds * hz)
    return [
        (start + i / hz, OxiSample(spo2[i % len(spo2)], pulse[i % len(pulse)])) for i in range(n)
    ]


def test_spot_session_gives_exactly_one_reading_with_the_median_of_the_last_window() -> None:
    agg = SessionAggregator(mode="spot", window_s=10, max_session_s=60)
    early = steady(0, 5, 10, [90], [120])  # settling values, outside the last 10 s
    late = steady(5, 12, 10, [95, 96, 99], [130, 140, 150])
    timeline = [(-1.0, SEARCHING), *early, *late, (17.0, OUT), (17.1, OUT)]
    results = play(agg, timeline)
    assert len(results) == 1
    window = [s for t, s in late if t >= late[-1][0] - 10]
    assert results[0].spo2 == statistics.median(s.spo2 for s in window)  # type: ignore[misc]
    assert results[0].pulse == statistics.median(s.pulse for s in window)  # type: ignore[misc]
    assert results[0].spo2 == 96 and results[0].pulse == 140
    assert agg.sessions == 1


def test_a_session_shorter_than_the_window_gives_nothing() -> None:
    agg = SessionAggregator(mode="spot", window_s=10)
    assert play(agg, [*steady(0, 6, 5, [97], [70]), (6.5, OUT)]) == []
    assert agg.too_short == 1


def test_markers_and_searching_never_reach_the_median() -> None:
    agg = SessionAggregator(mode="spot", window_s=2)
    timeline = []
    for i in range(40):
        t = i * 0.1
        timeline.append((t, IN if i % 2 else OxiSample(None, 72)))  # SpO2 missing half the time
    timeline.append((4.1, OUT))
    (result,) = play(agg, timeline)
    assert (result.spo2, result.pulse) == (97.0, 72.0)


def test_max_session_emits_once_then_waits_for_the_finger_to_come_out() -> None:
    agg = SessionAggregator(mode="spot", window_s=2, max_session_s=5)
    results = play(agg, [*steady(0, 12, 4, [97], [70]), (12.0, OUT)])
    assert len(results) == 1
    assert 4.5 <= results[0].at <= 5.0  # the last sample before max_session_s
    # The finger came out: the next session reads again.
    assert len(play(agg, [*steady(20, 3, 4, [94], [80]), (23.1, OUT)])) == 1


def test_a_silent_stream_ends_the_session() -> None:
    agg = SessionAggregator(mode="spot", window_s=2)
    play(agg, steady(0, 3, 4, [97], [70]))
    assert agg.tick(3.0) == []
    (result,) = agg.tick(10.0)  # the device fell silent (switched itself off)
    assert result.spo2 == 97
    assert not agg.active


def test_continuous_mode_gives_one_reading_per_interval() -> None:
    agg = SessionAggregator(mode="continuous", window_s=10, interval_s=5)
    results = play(agg, [*steady(0, 31, 2, [97], [70]), (31.0, OUT)])
    assert len(results) == 6  # at 5, 10, ..., 30 s
    for result, due in zip(results, [5, 10, 15, 20, 25, 30], strict=True):
        assert due - 0.5 <= result.at <= due
    assert agg.tick(100) == []  # finger out: nothing more


def test_reset_drops_a_cut_session() -> None:
    agg = SessionAggregator(mode="spot", window_s=2)
    play(agg, steady(0, 5, 4, [97], [70]))
    agg.reset()
    assert agg.tick(20) == []


samples = st.one_of(
    st.just(OUT),
    st.builds(
        OxiSample,
        st.one_of(st.none(), st.integers(1, 100)),
        st.one_of(st.none(), st.integers(1, 300)),
        flags=st.frozensets(st.sampled_from(["artifact", "low_perfusion"])),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(["spot", "continuous"]),
    events=st.lists(st.tuples(st.floats(0, 3), samples), max_size=200),
)
def test_random_sample_streams_never_crash_and_stay_in_range(
    mode: str, events: list[tuple[float, OxiSample]]
) -> None:
    agg = SessionAggregator(mode=mode, window_s=1, max_session_s=5, interval_s=2)  # type: ignore[arg-type]
    t = 0.0
    for dt, sample in events:
        t += dt
        for result in agg.feed(t, sample):
            assert 1 <= result.spo2 <= 100 and 1 <= result.pulse <= 300
    agg.tick(t + 100)
