"""The command line of a ``limpet proxy`` that runs as a fake pod.

Data flow: :class:`ProxyPodCommand` is a :data:`~limpet.devcluster.fakepods.BackendCommand`:
:class:`~limpet.devcluster.fakepods.FakePods` calls it with each pod's
:class:`~limpet.devcluster.fakepods.BackendSpec` and runs the argv it returns inside the
pod. The proxy serves traffic on the pod's port and its admin API on the same pod address
at ``admin_port`` (where the operator pushes plans, as to a real proxy pod), reads the
admin token from ``token_file`` and keeps its plan in a state folder of its own under
``state_root`` (``state-<pod>``, created here), so a restarted pod finds its last plan.

The demo, the operator tests and the operator benchmark all start their proxies through
this one builder. It only builds an argv: nothing here imports the proxy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from limpet.devcluster.fakepods import BackendSpec

ADMIN_PORT = 9901
"""The StickyService's default ``spec.proxy.adminPort``."""


def state_dir(state_root: Path, pod: str) -> Path:
    """Where the proxy of ``pod`` persists its plan."""
    return state_root / f"state-{pod}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyPodCommand:
    token_file: Path
    """The admin token (the operator's Secret), shared by every proxy of the group."""
    state_root: Path
    admin_port: int = ADMIN_PORT
    log_level: str = "warning"

    def __call__(self, spec: BackendSpec) -> list[str]:
        state = state_dir(self.state_root, spec.pod)
        state.mkdir(parents=True, exist_ok=True)
        return [
            sys.executable,
            "-m",
            "limpet.cli",
            "proxy",
            "--listen",
            f"{spec.host}:{spec.port}",
            "--admin-listen",
            f"{spec.host}:{self.admin_port}",
            "--token-file",
            str(self.token_file),
            "--state-dir",
            str(state),
            "--log-level",
            self.log_level,
        ]
