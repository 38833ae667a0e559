"""Timeline figures, the live view's text and the PNG/HTML report, from a recorded run."""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from pathlib import Path

import pytest

from limpet.demo.report import HTML_NAME, PNG_NAME, write_report
from limpet.demo.results import ServiceResult, all_ok, summary_json
from limpet.demo.store import StoreState
from limpet.demo.timeline import Phase, Timeline, imbalance, summarize
from limpet.demo.users import PhaseTally, TrafficSnapshot
from limpet.demo.view import Frame, LiveView, compact, render

STEADY = Phase(name="steady", title="Steady on 3", description="three pods")
KILL = Phase(name="kill", title="Failover", description="a pod dies", failover=True)


def snap(per_pod: dict[str, int], steady_broken: int = 0, kill_broken: int = 0) -> TrafficSnapshot:
    return TrafficSnapshot(
        phases={
            "steady": PhaseTally(
                requests=100, sessions=10, broken=steady_broken, moves=Counter(rebalance=3)
            ),
            "kill": PhaseTally(
                requests=50, errors=2, broken=kill_broken, moves=Counter(failover=4)
            ),
        },
        sessions_per_pod=per_pod,
        live_users=sum(per_pod.values()),
    )


def recorded(steady_broken: int = 0, kill_broken: int = 1) -> Timeline:
    tl = Timeline()
    tl.begin_phase(STEADY, 100.0, pods=("p0", "p1", "p2"))
    tl.sample(101.0, snap({"p0": 4, "p1": 3, "p2": 3}))
    tl.begin_phase(KILL, 110.0, pods=("p0", "p1", "p2"))
    tl.sample(111.0, snap({"p0": 5, "p1": 5}, steady_broken, kill_broken))
    tl.finish(120.0)
    tl.serving_pods = ("p0", "p1")
    return tl


def test_imbalance() -> None:
    assert imbalance([5, 5]) == (1.0, 0.0)
    assert imbalance([6, 2]) == (1.5, 0.5)
    assert imbalance([]) == (1.0, 0.0)


def test_summary_tolerates_breaks_only_in_failover() -> None:
    s = summarize(recorded(kill_broken=2))
    assert s.ok
    assert (s.requests, s.errors, s.broken, s.broken_outside_failover) == (150, 2, 2, 0)
    assert s.moves == {"rebalance": 3, "failover": 4}
    assert s.seconds == 20.0
    assert [p.seconds for p in s.phases] == [10.0, 10.0]
    assert s.imbalance_max == 1.0
    assert [p.pods_at_start for p in s.phases] == [("p0", "p1", "p2")] * 2
    assert s.sessions_elsewhere == 0
    bad = summarize(recorded(steady_broken=1))
    assert not bad.ok
    assert bad.broken_outside_failover == 1


def test_sessions_left_on_a_pod_that_no_longer_serves_are_counted() -> None:
    tl = recorded()
    tl.sample(119.0, snap({"p0": 5, "p1": 4, "p2": 2}))
    s = summarize(tl)
    assert s.sessions_per_pod == {"p0": 5, "p1": 4}
    assert s.sessions_elsewhere == 2


def cookie(tl: Timeline) -> ServiceResult:
    return ServiceResult(name="counter", mode="Cookie", timeline=tl, summary=summarize(tl))


STORE = StoreState(
    address="10.200.1.9:6379",
    proxies=2,
    samples=40,
    samples_up=40,
    fallbacks=0,
    keys={"keyReads": 12, "keyClaims": 30, "keyMoves": 0},
    proxy_moves={"drain": 5},
    replicas_agree="True (SessionStore)",
    learned_keys=27,
    live_sets=4,
)


def test_report_files(tmp_path: Path) -> None:
    tl = recorded()
    page = write_report([cookie(tl)], tmp_path / "out")
    png = (tmp_path / "out" / PNG_NAME).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000
    text = page.read_text()
    assert page.name == HTML_NAME
    assert "data:image/png;base64," in text
    assert "No session broke outside the failover phase." in text
    # The summary table holds every figure the issue asks for, as computed.
    for label, value in [
        ("requests", "150"),
        ("failed requests", "2"),
        ("sessions", "10"),
        ("sessions broken outside failover", "0"),
        ("moves by reason (as the app saw them)", "failover 4, rebalance 3"),
        ("sessions per pod at the end", "p0 5, p1 5"),
        ("imbalance at the end (max / mean)", "1.00"),
    ]:
        assert f"<tr><td>{label}</td><td>{value}</td></tr>" in text, label
    # One row a phase: title, length, requests, failed, sessions, broken, moves.
    assert "<tr><td>Failover</td><td>10 s</td><td>50</td><td>2</td>" in text
    assert "<td>1 (failover: tolerated)</td><td>failover 4</td></tr>" in text
    assert "<tr><td>Steady on 3</td><td>10 s</td><td>100</td><td>0</td><td>10</td>" in text


def test_report_says_when_sessions_broke(tmp_path: Path) -> None:
    tl = recorded(steady_broken=3)
    text = write_report([cookie(tl)], tmp_path / "out").read_text()
    assert "3 session(s) broke outside the failover phase." in text
    assert '<p class="bad">' in text
    assert "<tr><td>sessions broken outside failover</td><td>3</td></tr>" in text


def test_two_services_side_by_side_with_the_store(tmp_path: Path) -> None:
    header_tl = recorded(kill_broken=0)
    header_tl.sample(119.0, snap({"p0": 2, "p1": 6}, steady_broken=1))
    header = ServiceResult(
        name="counter-header",
        mode="Header + session store",
        timeline=header_tl,
        summary=summarize(header_tl),
        store=STORE,
        operator_sessions={"p1": 7, "p0": 3},
    )
    results = [cookie(recorded()), header]
    text = write_report(results, tmp_path / "out").read_text()
    assert (tmp_path / "out" / "sessions-counter-header.png").read_bytes().startswith(b"\x89PNG")
    assert "<th>counter (Cookie)</th><th>counter-header (Header + session store)</th>" in text
    # One column per service; the store's rows only in the Header service's column.
    assert "<tr><td>sessions per pod at the end</td><td>p0 5, p1 5</td><td>p0 2, p1 6</td>" in text
    assert "<tr><td>fallbacks to local tables</td><td>-</td><td>0</td></tr>" in text
    assert "<td>ReplicasAgree</td><td>-</td><td>True (SessionStore)</td>" in text
    assert "<td>40 of 40 samples</td>" in text
    assert (
        "<tr><td>sessions per pod at the end, as the operator counts them</td>"
        "<td>none</td><td>p0 3, p1 7</td></tr>"
    ) in text
    # A break in the second service is reported as its own, and fails the run.
    assert "counter-header (Header + session store): 1 session(s) broke" in text
    assert not all_ok(results)
    doc = summary_json(results)
    assert doc["ok"] is False
    assert doc["requests"] == 150  # the first service's figures at the top level
    assert [s["name"] for s in doc["services"]] == ["counter", "counter-header"]
    assert doc["services"][0]["store"] is None
    assert doc["services"][1]["store"]["up"] is True
    assert doc["services"][1]["store"]["learned_keys"] == 27
    assert doc["services"][1]["broken_outside_failover"] == 1
    assert doc["services"][1]["operator_sessions"] == {"p1": 7, "p0": 3}
    # Each phase row holds both services' figures.
    assert "<tr><td>Failover</td><td>10 s</td><td>50</td><td>2</td>" in text


def test_store_state_is_up_only_when_always_reachable_without_fallback() -> None:
    assert STORE.up
    assert not dataclasses.replace(STORE, samples_up=39).up
    assert not dataclasses.replace(STORE, fallbacks=1).up
    assert not dataclasses.replace(STORE, samples=0, samples_up=0).up


@pytest.mark.parametrize("interactive", [True, False])
def test_live_view(interactive: bool) -> None:
    frame = Frame(
        phase_index=2,
        phase_count=5,
        phase_title="Scale out",
        phase_description="two pods join",
        elapsed=30,
        total=120,
        snapshot=snap({"p0": 8, "p3": 2}),
        pod_notes={"p3": "new", "p4": "new"},
        status="plan v7, proxies 2/2 in sync",
        others=("counter-header (Header + session store): requests 20 broken 0",),
    )
    lines = render(frame, width=80)
    assert all(len(line) <= 80 for line in lines)
    assert any(line.strip().startswith("p4") and line.endswith("0 new") for line in lines)
    assert "Moves by reason: failover 4  rebalance 3" in lines
    assert lines[-1] == "counter-header (Header + session store): requests 20 broken 0"
    out = io.StringIO()
    view = LiveView(out, interactive=interactive)
    view.show(frame)
    view.show(frame)
    text = out.getvalue()
    if interactive:
        assert "\x1b[" in text
        assert text.count("Limpet demo") == 2
    else:
        assert text.splitlines() == [compact(frame)], "one line per phase or interval"
