"""Limpet: a Kubernetes operator and sticky-session proxy.

Packages, by layer (enforced by the import-linter contracts in pyproject.toml):

- ``limpet.affinity``: pure algorithms and the plan schema shared by both planes.
- ``limpet.proxy``: the data plane (asyncio), no Kubernetes.
- ``limpet.controller``: the operator (kopf), talks to proxies only over HTTP.
- ``limpet.devcluster``: the local control plane and fake pods for tests and the demo.
- ``limpet.cli``: the ``limpet`` command that wires them together.
"""
