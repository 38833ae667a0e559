"""The demo's report: a PNG of sessions per pod over time and an HTML page around it.

Data flow: a :class:`~limpet.demo.timeline.Timeline` and its
:class:`~limpet.demo.timeline.Summary` in; ``sessions.png`` (matplotlib, Agg backend, so
no display is needed) and ``report.html`` (the plot inlined as base64, so the page is
one self-contained file, plus a copy of the PNG beside it) out, in the given folder.

The plot has one line per pod (sessions it serves), the phases as shaded bands with
their titles, and a second axis with cumulative moves by reason. Blocking; called once
at the end of the run.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from limpet.demo.timeline import Summary, Timeline

PNG_NAME = "sessions.png"
HTML_NAME = "report.html"
_BANDS = ("#eef3fb", "#fbf3e6")
# Moves are drawn in greys and red (failover), so they never look like a pod's line.
_MOVE_STYLE = {
    "rebalance": ("#444444", "--"),
    "drain": ("#888888", "-."),
    "failover": ("#cc0000", ":"),
    "expired": ("#bbbbbb", "--"),
}


def plot_png(timeline: Timeline) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6), dpi=110)
    try:
        t0 = timeline.spans[0].start if timeline.spans else 0.0
        ts = [s.t - t0 for s in timeline.samples]
        for pod in timeline.pods:
            ax.plot(
                ts,
                [s.sessions_per_pod.get(pod, 0) for s in timeline.samples],
                label=pod,
                linewidth=1.8,
            )
        top = max(
            (max(s.sessions_per_pod.values(), default=0) for s in timeline.samples), default=1
        )
        for i, span in enumerate(timeline.spans):
            end = span.end if span.end is not None else (ts[-1] + t0 if ts else span.start)
            ax.axvspan(span.start - t0, end - t0, color=_BANDS[i % 2], zorder=0)
            ax.text(
                (span.start + end) / 2 - t0,
                top * 1.12,
                span.phase.title,
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, max(1, top) * 1.3)
        ax.set_xlabel("seconds")
        ax.set_ylabel("live sessions per pod")
        ax.set_title("Limpet demo: sessions per pod through scale-out, drain, failover and rollout")
        ax.grid(alpha=0.3)
        reasons = sorted({r for s in timeline.samples for r in s.moves})
        if reasons:
            ax2 = ax.twinx()
            for reason in reasons:
                colour, style = _MOVE_STYLE.get(reason, ("#666666", "--"))
                ax2.plot(
                    ts,
                    [s.moves.get(reason, 0) for s in timeline.samples],
                    color=colour,
                    linestyle=style,
                    linewidth=1.2,
                    label=f"moves: {reason}",
                )
            ax2.set_ylim(bottom=0)
            ax2.set_ylabel("cumulative session moves (dashed)")
            lines, labels = ax.get_legend_handles_labels()
            lines2, labels2 = ax2.get_legend_handles_labels()
            ax.legend(
                lines + lines2,
                labels + labels2,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.12),
                fontsize=8,
                ncol=6,
                frameon=False,
            )
        else:
            ax.legend(
                loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, ncol=6, frameon=False
            )
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _row(cells: list[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _moves(moves: dict[str, int] | object) -> str:
    if not isinstance(moves, dict) or not moves:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(moves.items()))


def render_html(summary: Summary, png: bytes, *, title: str = "Limpet demo report") -> str:
    verdict = (
        "No session broke outside the failover phase."
        if summary.ok
        else f"{summary.broken_outside_failover} session(s) broke outside the failover phase."
    )
    totals = [
        ("duration", f"{summary.seconds:.0f} s"),
        ("requests", f"{summary.requests}"),
        ("failed requests", f"{summary.errors}"),
        ("sessions", f"{summary.sessions}"),
        ("sessions broken (all phases)", f"{summary.broken}"),
        ("sessions broken outside failover", f"{summary.broken_outside_failover}"),
        ("resynced after a failed request", f"{summary.resynced}"),
        ("moves by reason", _moves(dict(summary.moves))),
        (
            "sessions per pod at the end",
            ", ".join(f"{p} {n}" for p, n in summary.sessions_per_pod.items()) or "none",
        ),
        ("live sessions left on pods that no longer serve", f"{summary.sessions_elsewhere}"),
        ("imbalance at the end (max / mean)", f"{summary.imbalance_max:.2f}"),
        ("imbalance at the end (mean deviation / mean)", f"{summary.imbalance_mean:.2f}"),
    ]
    phase_rows = [
        _row(
            [
                p.title,
                f"{p.seconds:.0f} s",
                str(p.requests),
                str(p.errors),
                str(p.sessions),
                str(p.broken) + (" (failover: tolerated)" if p.failover else ""),
                _moves(dict(p.moves)),
            ]
        )
        for p in summary.phases
    ]
    errors = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in summary.error_samples)
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
.ok {{ color: #176b2c; }} .bad {{ color: #a11; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="{"ok" if summary.ok else "bad"}"><strong>{html.escape(verdict)}</strong></p>
<img alt="sessions per pod over time, phases marked" src="data:image/png;base64,{image}">
<h2>Summary</h2>
<table>{"".join(_row([k, v]) for k, v in totals)}</table>
<h2>Phases</h2>
<table>
{_row(["phase", "length", "requests", "failed", "new sessions", "broken", "moves"], header=True)}
{"".join(phase_rows)}
</table>
{"<h2>Sample errors</h2><ul>" + errors + "</ul>" if errors else ""}
<p>A session is <em>broken</em> when a request reaches a pod that does not hold it and
Limpet did not announce a move (<code>Limpet-Session-Moved</code>). Announced moves
(rebalance, drain, failover) let the app reload the session: they are counted as moves,
not breaks.</p>
</body></html>
"""


def write_report(timeline: Timeline, summary: Summary, folder: Path) -> Path:
    """Write the PNG and the HTML page into ``folder``; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    png = plot_png(timeline)
    (folder / PNG_NAME).write_bytes(png)
    page = folder / HTML_NAME
    page.write_text(render_html(summary, png))
    return page
