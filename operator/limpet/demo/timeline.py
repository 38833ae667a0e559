"""What the demo records while it runs, and the figures computed from it.

Data flow: the scenario calls :meth:`Timeline.begin_phase` at each phase boundary and
:meth:`Timeline.sample` a few times a second with the user pool's
:class:`~limpet.demo.users.TrafficSnapshot`. :func:`summarize` turns the recording into
the :class:`Summary` that the live view's last frame, the HTML report and the
end-to-end test read: requests, sessions, broken sessions per phase, moves by reason,
and the imbalance (max / mean sessions per serving pod) at the end.

Pure data, no I/O; one thread.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from limpet.demo.users import PhaseTally, TrafficSnapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """One step of the scenario."""

    name: str
    title: str
    description: str
    failover: bool = False
    """Broken sessions are tolerated in this phase only (a pod was killed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseSpan:
    phase: Phase
    start: float
    end: float | None = None
    pods: tuple[str, ...] = ()
    """The pods that took new sessions when the phase began."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    t: float
    phase: str
    sessions_per_pod: Mapping[str, int]
    requests: int
    errors: int
    broken: int
    moves: Mapping[str, int]


@dataclass(slots=True)
class Timeline:
    spans: list[PhaseSpan] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    """Every pod that ever held a session, in order of appearance (stable plot colours)."""
    last: TrafficSnapshot | None = None
    serving_pods: tuple[str, ...] = ()
    """The pods that take sessions at the end (set by the scenario)."""

    def begin_phase(self, phase: Phase, t: float, *, pods: tuple[str, ...] = ()) -> None:
        self.finish(t)
        self.spans.append(PhaseSpan(phase=phase, start=t, pods=pods))

    def finish(self, t: float) -> None:
        if self.spans and self.spans[-1].end is None:
            self.spans[-1] = dataclasses.replace(self.spans[-1], end=t)

    def sample(self, t: float, snap: TrafficSnapshot) -> Sample:
        total = snap.total()
        for pod in sorted(snap.sessions_per_pod):
            if pod not in self.pods:
                self.pods.append(pod)
        s = Sample(
            t=t,
            phase=self.spans[-1].phase.name if self.spans else "",
            sessions_per_pod=dict(snap.sessions_per_pod),
            requests=total.requests,
            errors=total.errors,
            broken=total.broken,
            moves=dict(total.moves),
        )
        self.samples.append(s)
        self.last = snap
        return s


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseSummary:
    name: str
    title: str
    seconds: float
    requests: int
    errors: int
    sessions: int
    broken: int
    resynced: int
    moves: Mapping[str, int]
    failover: bool
    pods_at_start: tuple[str, ...] = ()
    """The pods that took new sessions when the phase began."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    seconds: float
    requests: int
    errors: int
    sessions: int
    broken: int
    broken_outside_failover: int
    resynced: int
    moves: Mapping[str, int]
    phases: Sequence[PhaseSummary]
    sessions_per_pod: Mapping[str, int]
    """Live sessions per serving pod in the last sample."""
    imbalance_max: float
    """max / mean sessions per serving pod in the last sample (1.0 is perfect)."""
    imbalance_mean: float
    """mean |sessions - mean| / mean over serving pods in the last sample."""
    error_samples: Sequence[str]
    sessions_elsewhere: int = 0
    """Live sessions last served by a pod that no longer serves at the end (a rollout
    that left sessions behind would show here)."""

    @property
    def ok(self) -> bool:
        return self.broken_outside_failover == 0


def imbalance(counts: Sequence[int]) -> tuple[float, float]:
    """(max/mean, mean absolute deviation/mean); (1.0, 0.0) when there is nothing."""
    if not counts or sum(counts) == 0:
        return 1.0, 0.0
    mean = sum(counts) / len(counts)
    return max(counts) / mean, sum(abs(c - mean) for c in counts) / len(counts) / mean


def _phase_summary(span: PhaseSpan, tally: PhaseTally) -> PhaseSummary:
    end = span.end if span.end is not None else span.start
    return PhaseSummary(
        name=span.phase.name,
        title=span.phase.title,
        seconds=end - span.start,
        requests=tally.requests,
        errors=tally.errors,
        sessions=tally.sessions,
        broken=tally.broken,
        resynced=tally.resynced,
        moves=dict(tally.moves),
        failover=span.phase.failover,
        pods_at_start=span.pods,
    )


def summarize(timeline: Timeline) -> Summary:
    snap = timeline.last
    if snap is None:
        raise ValueError("nothing was recorded")
    total = snap.total()
    phases = [
        _phase_summary(span, snap.phases.get(span.phase.name, PhaseTally()))
        for span in timeline.spans
    ]
    # Traffic counted before the first phase began (start-up) counts as not failover.
    failover_names = {p.name for p in phases if p.failover}
    broken_outside = sum(t.broken for name, t in snap.phases.items() if name not in failover_names)
    serving = timeline.serving_pods or tuple(sorted(snap.sessions_per_pod))
    per_pod = {pod: snap.sessions_per_pod.get(pod, 0) for pod in serving}
    elsewhere = sum(n for pod, n in snap.sessions_per_pod.items() if pod not in serving)
    imb_max, imb_mean = imbalance(list(per_pod.values()))
    moves: Counter[str] = Counter(total.moves)
    start = timeline.spans[0].start if timeline.spans else 0.0
    end = timeline.spans[-1].end if timeline.spans and timeline.spans[-1].end else start
    return Summary(
        seconds=end - start,
        requests=total.requests,
        errors=total.errors,
        sessions=total.sessions,
        broken=total.broken,
        broken_outside_failover=broken_outside,
        resynced=total.resynced,
        moves=dict(moves),
        phases=phases,
        sessions_per_pod=per_pod,
        imbalance_max=imb_max,
        imbalance_mean=imb_mean,
        error_samples=total.error_samples,
        sessions_elsewhere=elsewhere,
    )
