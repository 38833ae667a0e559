"""model/spec: spec.sessionStore and the last-seen step the plan states (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from limpet.affinity.plan.codec import plan_from_json, plan_to_json
from limpet.controller.model.keys import new_material
from limpet.controller.model.planner import PlanInputs, PlannerState, plan_next
from limpet.controller.model.spec import KeyRef, SpecError, parse_spec


def _spec(**extra: Any) -> dict[str, Any]:
    return {"service": "shop", "port": "http", **extra}


def test_no_store_by_default() -> None:
    assert parse_spec(_spec()).session_store is None


def test_store_reads_every_field_with_defaults() -> None:
    spec = parse_spec(
        _spec(
            affinity={"type": "Header", "header": {"name": "X-U"}, "idleTimeout": "10m"},
            sessionStore={
                "address": "redis.cache:6379",
                "passwordSecretRef": {"name": "auth"},
                "tls": {"enabled": True, "caSecretRef": {"name": "ca", "key": "bundle.pem"}},
            },
        )
    )
    store = spec.session_store
    assert store is not None
    assert store.address == "redis.cache:6379"
    assert store.password == KeyRef(name="auth", key="password")
    assert store.tls.enabled
    assert store.tls.ca_secret == KeyRef(name="ca", key="bundle.pem")
    assert store.tls.ca_config_map is None
    assert store.timeout == pytest.approx(0.25)
    assert store.prefix_for("web", "shop") == "limpet:web/shop:"
    # The plan names files, never the password.
    plan = store.plan_settings("web", "shop")
    assert plan.address == "redis.cache:6379"
    assert plan.tls
    assert plan.password_file == "/etc/limpet/session-store/password"
    assert plan.ca_file == "/etc/limpet/session-store/ca.crt"
    assert plan.key_prefix == "limpet:web/shop:"
    assert (plan.timeout, plan.ttl_slack) == (0.25, 60.0)


def test_store_without_secrets_or_tls_names_no_files() -> None:
    spec = parse_spec(
        _spec(
            sessionStore={
                "address": "[fd00::7]:6380",
                "database": 2,
                "keyPrefix": "p:",
                "ttlSlack": "5s",
                "timeout": "40ms",
                "tls": {"enabled": False},
            }
        )
    )
    store = spec.session_store
    assert store is not None
    plan = store.plan_settings("web", "shop")
    assert (plan.password_file, plan.ca_file, plan.tls, plan.tls_server_name) == (
        None,
        None,
        False,
        None,
    )
    assert (plan.database, plan.key_prefix, plan.ttl_slack) == (2, "p:", 5.0)
    assert plan.timeout == pytest.approx(0.04)


def test_store_without_address_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"spec\.sessionStore\.address"):
        parse_spec(_spec(sessionStore={"username": "x"}))
    with pytest.raises(SpecError, match=r"passwordSecretRef\.name"):
        parse_spec(_spec(sessionStore={"address": "r:1", "passwordSecretRef": {}}))


@pytest.mark.parametrize(
    ("extra", "step"),
    [
        ({}, 1),  # drain.minIdle 10s, rebalance.minIdle 30s: a tenth of 10 s
        ({"drain": {"minIdle": "50s"}}, 3),  # the smaller is rebalance's 30 s
        ({"drain": {"minIdle": "2m"}, "rebalance": {"minIdle": "2m"}}, 5),  # capped at 5 s
        ({"drain": {"minIdle": "2m"}, "rebalance": {"mode": "Never", "minIdle": "0s"}}, 5),
        ({"drain": {"minIdle": "0s"}}, 1),
        ({"affinity": {"lastSeenGranularity": "7s"}, "drain": {"minIdle": "1m"}}, 7),
    ],
)
def test_the_plan_always_states_the_step(extra: dict[str, Any], step: int) -> None:
    spec = parse_spec(_spec(**extra))
    assert spec.last_seen_granularity() == step
    affinity = spec.plan_affinity()
    assert affinity.last_seen_granularity == step
    # Stated, not left to the proxies' derivation, which changes while a rebalance runs.
    assert affinity.idle_timeout == spec.affinity.idle_timeout


def test_the_planner_states_the_step_and_it_survives_the_codec() -> None:
    spec = parse_spec(_spec(drain={"minIdle": "40s"}, rebalance={"minIdle": "1m"}))
    inputs = PlanInputs(name="ns/s", spec=spec, members={}, cookie_keys=new_material(0).plan_keys())
    plan = plan_next(inputs, PlannerState(), now=1000.0).plan
    again = plan_from_json(plan_to_json(plan))
    assert again.affinity.last_seen_granularity == 4
    assert again.granularity == 4
    assert again.session_store is None


def test_the_planner_carries_the_store_and_it_survives_the_codec() -> None:
    spec = parse_spec(
        _spec(
            sessionStore={
                "address": "redis.cache:6379",
                "username": "limpet",
                "passwordSecretRef": {"name": "auth", "key": "pw"},
                "tls": {"enabled": True, "caConfigMapRef": {"name": "ca"}, "serverName": "r.c"},
            }
        )
    )
    inputs = PlanInputs(
        name="web/shop", spec=spec, members={}, cookie_keys=new_material(0).plan_keys()
    )
    body = plan_to_json(plan_next(inputs, PlannerState(), now=1000.0).plan)
    assert '"auth"' not in body  # the Secret's name and key stay out of the plan
    assert '"pw"' not in body
    store = plan_from_json(body).session_store
    assert store is not None
    assert store.key_prefix == "limpet:web/shop:"
    assert store.username == "limpet"
    assert (store.tls, store.tls_server_name) == (True, "r.c")
    assert store.password_file == "/etc/limpet/session-store/password"
    assert store.ca_file == "/etc/limpet/session-store/ca.crt"
