"""The plan schema (version 1): the whole contract between the operator and the proxies.

``Plan`` and its parts are frozen, self-validating dataclasses; :func:`plan_to_json` /
:func:`plan_from_json` (and the ``_dict`` pair) in ``codec`` convert canonically and
strictly, raising :class:`PlanError` with the JSON path of any bad field. The schema
is documented in ``docs/plan.md``. Pure values, no I/O.
"""

from ..errors import PlanError
from ..lifecycle import BackendState
from ..limits import MAX_WEIGHT
from .codec import plan_from_dict, plan_from_json, plan_to_dict, plan_to_json
from .model import (
    SCHEMA_VERSION,
    AffinitySettings,
    AffinityType,
    Backend,
    BalanceSettings,
    ClientIPSettings,
    CookieKey,
    CookieSettings,
    DrainSettings,
    LifetimeType,
    Plan,
    RebalanceSchedule,
    SameSite,
    SessionStoreSettings,
)

__all__ = [
    "MAX_WEIGHT",
    "SCHEMA_VERSION",
    "AffinitySettings",
    "AffinityType",
    "Backend",
    "BackendState",
    "BalanceSettings",
    "ClientIPSettings",
    "CookieKey",
    "CookieSettings",
    "DrainSettings",
    "LifetimeType",
    "Plan",
    "PlanError",
    "RebalanceSchedule",
    "SameSite",
    "SessionStoreSettings",
    "plan_from_dict",
    "plan_from_json",
    "plan_to_dict",
    "plan_to_json",
]
