"""A real local Kubernetes control plane and fake pods, for tests and the demo.

Modules (import what you need; this package imports nothing itself):

- ``cluster``: :class:`DevCluster`, etcd, kube-apiserver, kube-controller-manager and
  kube-scheduler on loopback (``components`` runs the last two); ``command`` is
  ``limpet devcluster``. ``certs``, ``kubeconfig``, ``binaries``, ``process``,
  ``ports``, ``workdirs`` and ``ownership`` are its parts.
- ``client``: ``kubernetes`` API clients, raw/server-side-apply requests, CRD
  installation; ``namespaces``: fresh test namespaces and their complete purge.
- ``fakepods``: :class:`FakePods`, backends published through real EndpointSlices
  (``endpointslices`` builds the manifests, ``backend`` is the default backend), on a
  pod network from ``podnet``: ``netns`` (namespaces, real pod IPs) or ``loopback``
  (placeholders plus an explicit address override), both handing out ``podslot``'s
  values. ``hostnet`` reads host routes.
  ``proxypod`` builds the command line of a ``limpet proxy`` run as a fake pod.
- ``podrunner``: the pod runner, a kubelet-like node agent: Nodes and Leases, and every
  Pod bound to them run as processes in network namespaces (``podrunner.process``
  starts it for a DevCluster).
- ``redis``: :class:`RedisPod`, a real ``redis-server`` with a password as a Pod on the
  pod runner, reachable from other pods: a session store for the demo and tests.

See docs/devcluster.md.
"""
