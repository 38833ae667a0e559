"""The pod runner: a node agent in the spirit of a kubelet, for tests and the demo only.

Modules: ``runner`` (nodes, pod watch, workers), ``node`` (Node, Lease, Ready),
``pod`` (one pod's lifecycle and status), ``container`` (process supervision, probes,
restart back-off, graceful stop), ``launcher`` (the process that becomes a container:
namespaces, mounts, user), ``spec`` (pod spec -> what to run), ``volumes``, ``probes``,
``status``, ``images`` (the image table), ``kubeapi`` (asyncio API client) and
``command`` (``python -m limpet.devcluster.podrunner``). See docs/devcluster.md.
"""
