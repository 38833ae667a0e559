"""The control plane: the StickyService operator (kopf, run in-process by ``limpet operator``).

Modules, one concern each (data flows top to bottom):

- ``command``: the CLI, pre-flight checks, and kopf started in-process.
- ``config``, ``kube``: where the cluster is (like kubectl) and an async API client.
- ``handlers``: the kopf registry (login, create/update/resume/delete, one daemon per
  StickyService) and kopf's settings.
- ``reconciler``: one StickyService end to end: watch, plan, persist, push, report.
- ``watches``, ``reporter``: a reconciler's subscriptions to the shared watches; its
  status writes (serialized, written before a lifecycle change is pushed) and Events.
- ``watchhub``, ``informer``: server-side-filtered watches, shared per namespace.
- ``spec``, ``membership``: the spec and the EndpointSlices as typed values; backend ids.
- ``planner``, ``debounce``: the next plan from membership and state; pacing of bursts.
- ``pusher``: the plan to every proxy's admin API, with retries, catching up restarts.
- ``proxies``, ``keys``: what the operator creates (Deployment, Service, Secret), and
  the admin token, id key and cookie keys.
- ``status``: status and conditions out, recovered planner state in.
- ``settings``: every knob, one frozen object.

See docs/operator.md and docs/crd.md.
"""
