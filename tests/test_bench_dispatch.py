"""Smoke test of `python -m bot bench dispatch` at tiny sizes: the figures it prints add
up (everything delivered, nothing dropped, the per-member window kept). Not a timing test."""

from __future__ import annotations

from bench.dispatch import limit_case, run_throughput


def test_throughput_part_delivers_everything(tmp_path):
    cases = {case.name: case for case in run_throughput(40, 20, tmp_path)}
    assert set(cases) == {"bare send_message loop", "dispatcher (outbox)", "dispatcher, broadcast"}
    for case in cases.values():
        assert (case.delivered, case.dropped) == (case.messages, 0), case
        assert case.seconds > 0 and case.peak_rss_mb > 0
    assert cases["dispatcher (outbox)"].messages == 40 and cases["dispatcher (outbox)"].sent_rows == 40
    assert cases["dispatcher (outbox)"].calls == 40
    broadcast = cases["dispatcher, broadcast"]
    assert (broadcast.messages, broadcast.calls, broadcast.largest_call, broadcast.sent_rows) == (20, 1, 20, 20)


async def test_limits_part_keeps_one_member_within_30_a_minute(tmp_path):
    case = await limit_case("40 to one member", ["rep_bench"], 40, tmp_path)
    assert (case.delivered, case.dropped, case.left_pending) == (40, 0, 0)
    assert case.busiest_minute == 30
    assert case.minimum_seconds == 60
    # The window was used, not waited out needlessly: within a few seconds of the minimum.
    assert 60 <= case.simulated_seconds < 65
