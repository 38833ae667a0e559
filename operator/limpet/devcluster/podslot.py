"""The value types of a fake pod's place on a pod network.

Data flow: a pod network (``netns`` or ``loopback``) hands out a :class:`PodSlot`
per pod; ``fakepods`` publishes its ``address``/``port`` in the EndpointSlice,
starts the backend on ``bind`` and reaches it on ``connect``. These types live
apart from ``podnet`` (which picks an implementation and so imports both) so that
the implementations depend on them without an import cycle.

Immutable values; safe from any thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["netns", "loopback"]

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PodSlot:
    pod: str
    address: str
    """What the EndpointSlice says: a pod IP in a namespace, or a placeholder."""
    port: int
    """The port the EndpointSlice says."""
    bind: Endpoint
    """Where the backend listens, as seen from inside its namespace."""
    connect: Endpoint
    """Where the root namespace reaches the backend."""
    netns: str | None = None
    host_link: str | None = None
