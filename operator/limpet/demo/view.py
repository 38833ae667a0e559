"""The demo's live terminal view.

Data flow: the scenario hands a :class:`Frame` (phase, progress, the pool's snapshot, notes
per pod, a status line from the StickyService) to :meth:`LiveView.show` a few times a
second. :func:`render` turns a frame into text (pure, tested); on a terminal the view
redraws in place with ANSI cursor movement, otherwise (a pipe, CI, a test) it prints one
compact line at most every ``line_interval`` seconds and at each phase change, so logs
stay readable.

One thread; the stream is only written from :meth:`show` and :meth:`close`.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

from limpet.demo.users import TrafficSnapshot

_BAR = "█"
_EMPTY = "░"


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    phase_index: int
    phase_count: int
    phase_title: str
    phase_description: str
    elapsed: float
    total: float
    snapshot: TrafficSnapshot
    pod_notes: Mapping[str, str] = field(default_factory=dict)
    """Pod -> "new", "draining", "killed", ... shown next to its bar."""
    status: str = ""
    """One line about the control plane (plan version, proxies in sync)."""
    others: tuple[str, ...] = ()
    """One line for each StickyService beside the first (its traffic, its store)."""


def _bar(fraction: float, width: int) -> str:
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return _BAR * full + _EMPTY * (width - full)


def render(frame: Frame, *, width: int = 80) -> list[str]:
    snap = frame.snapshot
    total = snap.total()
    progress = frame.elapsed / frame.total if frame.total else 1.0
    head = (
        f"Limpet demo  phase {frame.phase_index}/{frame.phase_count}: {frame.phase_title}  "
        f"{frame.elapsed:5.0f}s / {frame.total:.0f}s"
    )
    lines = [
        head[:width],
        f"[{_bar(progress, max(10, width - 8))}] {progress:4.0%}"[:width],
        *textwrap.wrap(frame.phase_description, width)[:2],
        "",
        "Sessions per pod (live users, by the pod that served their last request)",
    ]
    pods = sorted(set(snap.sessions_per_pod) | set(frame.pod_notes))
    peak = max(snap.sessions_per_pod.values(), default=0)
    name_w = max((len(p) for p in pods), default=4)
    bar_w = max(10, width - name_w - 22)
    for pod in pods:
        n = snap.sessions_per_pod.get(pod, 0)
        note = frame.pod_notes.get(pod, "")
        bar = _bar(n / peak if peak else 0.0, bar_w)
        lines.append(f"  {pod:<{name_w}} {bar} {n:4d} {note}"[:width].rstrip())
    moves = "  ".join(f"{k} {v}" for k, v in sorted(total.moves.items())) or "none yet"
    lines += [
        "",
        f"Moves by reason: {moves}"[:width],
        (
            f"Requests {total.requests}  failed {total.errors}  broken {total.broken}  "
            f"resynced {total.resynced}  sessions {total.sessions}  users {snap.live_users}"
        )[:width],
    ]
    if frame.status:
        lines.append(frame.status[:width])
    for other in frame.others:
        lines += textwrap.wrap(other, width)[:2]
    return lines


def compact(frame: Frame) -> str:
    total = frame.snapshot.total()
    pods = " ".join(f"{p}={n}" for p, n in sorted(frame.snapshot.sessions_per_pod.items()))
    moves = ",".join(f"{k}:{v}" for k, v in sorted(total.moves.items())) or "-"
    return (
        f"[{frame.elapsed:5.1f}s {frame.phase_index}/{frame.phase_count} {frame.phase_title}] "
        f"pods {pods or '-'} | moves {moves} | req {total.requests} failed {total.errors} "
        f"broken {total.broken}" + "".join(f" || {other}" for other in frame.others)
    )


class LiveView:
    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interactive: bool | None = None,
        line_interval: float = 5.0,
    ) -> None:
        self._out = stream or sys.stdout
        self._tty = self._out.isatty() if interactive is None else interactive
        self._drawn = 0
        self._line_interval = line_interval
        self._last_line = 0.0
        self._last_phase = -1

    def show(self, frame: Frame) -> None:
        if self._tty:
            width = min(100, shutil.get_terminal_size((80, 24)).columns)
            lines = render(frame, width=width)
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self._out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            # Erase lines left over from a taller previous frame.
            for _ in range(self._drawn - len(lines)):
                self._out.write("\x1b[2K\n")
            self._drawn = max(self._drawn, len(lines))
        else:
            now = time.monotonic()
            if (
                frame.phase_index != self._last_phase
                or now - self._last_line >= self._line_interval
            ):
                self._out.write(compact(frame) + "\n")
                self._last_line = now
                self._last_phase = frame.phase_index
        self._out.flush()

    def say(self, text: str) -> None:
        """A message outside the live frame (start-up steps, the report path)."""
        self._out.write(text + "\n")
        self._out.flush()
        self._drawn = 0
