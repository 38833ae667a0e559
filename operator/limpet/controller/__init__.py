"""The control plane: the StickyService operator (kopf, run in-process by ``limpet operator``).

The folder shows the flow: kube I/O in, the pure model in the middle, effects out, and
the wiring on top.

- ``command``: the CLI, pre-flight checks, and kopf started in-process.
- ``handlers``: the kopf registry (login, create/update/resume/delete, one daemon per
  StickyService) and kopf's settings.
- ``reconciler``: one StickyService end to end: watch, plan, persist, push, report;
  ``debounce`` paces its planning passes.
- ``kube/``: cluster config, the API client, list+watch, the shared per-namespace
  watches and one StickyService's subscriptions to them.
- ``model/``: settings, spec, membership, planner, status, keys (pure).
- ``effects/``: proxies (what the operator creates), pusher (plans to the proxies),
  reporter (status and Events).

The layers are import-linter contracts in pyproject.toml. See docs/operator.md and
docs/crd.md.
"""
