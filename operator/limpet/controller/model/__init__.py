"""The pure model: values and the functions between them, no I/O.

- ``settings``: every knob, one frozen object.
- ``spec``, ``membership``, ``names``: the spec and the EndpointSlices as typed values;
  backend ids; the names of what the operator creates.
- ``planner``: the next plan from membership and the previous state.
- ``status``: status and conditions out, recovered planner state in.
- ``keys``: the admin token, the id key and the cookie keys as values.

Nothing here imports the kube I/O, the effects, asyncio or an HTTP client (checked by
import-linter, see pyproject.toml): the clock and randomness are the only inputs not
passed in.
"""
