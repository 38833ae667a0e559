"""The demo's report: PNGs of sessions per pod over time and an HTML page around them.

Data flow: one :class:`~limpet.demo.results.ServiceResult` per StickyService (its
:class:`~limpet.demo.timeline.Timeline`, its :class:`~limpet.demo.timeline.Summary` and,
with a session store, its :class:`~limpet.demo.store.StoreState`) in; ``sessions.png``
for the first service and ``sessions-<name>.png`` for the others (matplotlib, Agg
backend, so no display is needed) and ``report.html`` out, in the given folder. The page
shows the services side by side: one column each in the summary (with the store's rows
for a service that has one), their figures per phase in one table, then the plots
(inlined as base64, so the page is one self-contained file).

The plot has one line per pod (sessions it serves), the phases as shaded bands with
their titles, and a second axis with cumulative moves by reason. Blocking; called once
at the end of the run.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from limpet.demo.results import ServiceResult
from limpet.demo.store import StoreState
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


def _store_rows(store: StoreState) -> list[tuple[str, str]]:
    keys = ", ".join(f"{k} {v}" for k, v in store.keys.items() if v) or "none"
    return [
        ("store", f"redis-server at {store.address}"),
        ("store reachable from every proxy", f"{store.samples_up} of {store.samples} samples"),
        ("fallbacks to local tables", f"{store.fallbacks}"),
        ("ReplicasAgree", store.replicas_agree),
        ("learned keys in the store at the end", f"{store.learned_keys}"),
        ("per-backend live-session sets in the store", f"{store.live_sets}"),
        ("the proxies' key calls (summed)", keys),
        ("moves the proxies counted", _moves(dict(store.proxy_moves))),
    ]


def _verdict(result: ServiceResult) -> str:
    s = result.summary
    if s.ok:
        return f"{result.name} ({result.mode}): no session broke outside the failover phase."
    return (
        f"{result.name} ({result.mode}): {s.broken_outside_failover} session(s) broke "
        "outside the failover phase."
    )


def _totals(summary: Summary) -> list[tuple[str, str]]:
    return [
        ("duration", f"{summary.seconds:.0f} s"),
        ("requests", f"{summary.requests}"),
        ("failed requests", f"{summary.errors}"),
        ("sessions", f"{summary.sessions}"),
        ("sessions broken (all phases)", f"{summary.broken}"),
        ("sessions broken outside failover", f"{summary.broken_outside_failover}"),
        ("resynced after a failed request", f"{summary.resynced}"),
        ("moves by reason (as the app saw them)", _moves(dict(summary.moves))),
        (
            "sessions per pod at the end",
            ", ".join(f"{p} {n}" for p, n in summary.sessions_per_pod.items()) or "none",
        ),
        ("live sessions left on pods that no longer serve", f"{summary.sessions_elsewhere}"),
        ("imbalance at the end (max / mean)", f"{summary.imbalance_max:.2f}"),
        ("imbalance at the end (mean deviation / mean)", f"{summary.imbalance_mean:.2f}"),
    ]


def _side_by_side(results: Sequence[ServiceResult]) -> str:
    """One row per figure, one column per service; store rows where a service has one."""
    columns = [dict(_totals(r.summary)) for r in results]
    for column, r in zip(columns, results, strict=True):
        column["sessions per pod at the end, as the operator counts them"] = (
            ", ".join(f"{p} {n}" for p, n in sorted(r.operator_sessions.items())) or "none"
        )
    for column, r in zip(columns, results, strict=True):
        if r.store is not None:
            column.update(_store_rows(r.store))
    labels: list[str] = []
    for column in columns:
        labels += [k for k in column if k not in labels]
    head = _row(["", *(f"{r.name} ({r.mode})" for r in results)], header=True)
    body = "".join(_row([k, *(c.get(k, "-") for c in columns)]) for k in labels)
    return head + body


def _phases(results: Sequence[ServiceResult]) -> str:
    per_service = ["requests", "failed", "new sessions", "broken", "moves"]
    head = _row(
        ["phase", "length", *(f"{r.name}: {c}" for r in results for c in per_service)],
        header=True,
    )
    rows = []
    for i, p in enumerate(results[0].summary.phases):
        cells = [p.title, f"{p.seconds:.0f} s"]
        for r in results:
            q = r.summary.phases[i]
            cells += [
                str(q.requests),
                str(q.errors),
                str(q.sessions),
                str(q.broken) + (" (failover: tolerated)" if q.failover else ""),
                _moves(dict(q.moves)),
            ]
        rows.append(_row(cells))
    return head + "".join(rows)


def render_html(
    results: Sequence[ServiceResult],
    pngs: Sequence[bytes],
    *,
    title: str = "Limpet demo report",
) -> str:
    ok = all(r.ok for r in results)
    verdicts = "".join(
        f'<p class="{"ok" if r.ok else "bad"}"><strong>{html.escape(_verdict(r))}</strong></p>'
        for r in results
    )
    images = "".join(
        f"<h3>{html.escape(r.name)} ({html.escape(r.mode)})</h3>"
        f'<img alt="{html.escape(r.name)}: sessions per pod over time, phases marked" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for r, png in zip(results, pngs, strict=True)
    )
    samples = [e for r in results for e in r.summary.error_samples][:10]
    errors = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in samples)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
.ok {{ color: #176b2c; }} .bad {{ color: #a11; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="{"ok" if ok else "bad"}"><strong>{
        "No session broke outside the failover phase."
        if ok
        else "Sessions broke outside the failover phase."
    }</strong></p>
{verdicts}
<h2>Summary</h2>
<table>{_side_by_side(results)}</table>
<h2>Phases</h2>
<table>
{_phases(results)}
</table>
<h2>Sessions per pod</h2>
{images}
{"<h2>Sample errors</h2><ul>" + errors + "</ul>" if errors else ""}
<p>A session is <em>broken</em> when a request reaches a pod that does not hold it and
Limpet did not announce a move (<code>Limpet-Session-Moved</code>). Announced moves
(rebalance, drain, failover) let the app reload the session: they are counted as moves,
not breaks. Both services front the same app pods; each has its own two proxies, and
every user sends each request to one of its service's proxies at random.</p>
</body></html>
"""


def png_name(index: int, result: ServiceResult) -> str:
    """``sessions.png`` for the first service, ``sessions-<name>.png`` for the others."""
    return PNG_NAME if index == 0 else f"sessions-{result.name}.png"


def write_report(results: Sequence[ServiceResult], folder: Path) -> Path:
    """Write the PNGs and the HTML page into ``folder``; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = [plot_png(r.timeline) for r in results]
    for i, (r, png) in enumerate(zip(results, pngs, strict=True)):
        (folder / png_name(i, r)).write_bytes(png)
    page = folder / HTML_NAME
    page.write_text(render_html(results, pngs))
    return page
