"""The numeric limits shared by the plan schema and the algorithms that use it.

Slot-table sizes and the largest weight. Kept apart from :mod:`.hashing` and
:mod:`.slottable` so that the plan schema (:mod:`.plan`) reads its limits without
importing numpy. Constants only.
"""

from __future__ import annotations

DEFAULT_SIZE = 65537
"""Default slot-table size: a prime of about 64 Ki slots."""

LARGE_SIZE = 1_000_003
"""The largest supported slot-table size (a prime), recommended above a few hundred backends."""

MAX_SIZE = LARGE_SIZE

MAX_WEIGHT = 1_000_000
"""The largest accepted weight (also the plan's limit)."""

MAX_BACKENDS = 10_000
"""The most backends a plan may list. Building the slot table takes seconds at this
size (about 1.6 s for 10 000 on a busy 2-core machine, 8 s for 30 000, growing faster
than linearly), so a bigger plan is refused with a clear error instead of holding a
push for minutes."""
