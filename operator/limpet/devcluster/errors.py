"""Errors of the dev cluster and fake pods, each with a message a person can act on.

No data flow or concurrency: plain exception types, raised by the other modules
and printed as-is by ``limpet devcluster`` and the pytest fixtures.
"""

from __future__ import annotations


class DevClusterError(Exception):
    """Base class: the message says what failed and what to do about it."""


class BinaryNotFoundError(DevClusterError):
    """etcd, kube-apiserver or kubectl is not where we looked."""


class PortInUseError(DevClusterError):
    """A port asked for (or picked) is already taken by another process."""


class ProcessExitedError(DevClusterError):
    """A control-plane process exited; the message ends with the tail of its log."""


class ReadyTimeoutError(DevClusterError):
    """The API server did not become ready in time."""


class StartCancelledError(DevClusterError):
    """Start-up was interrupted (SIGINT/SIGTERM) before the cluster became ready."""


class FakePodError(DevClusterError):
    """A fake pod could not be created, checked or published."""


class NetnsUnavailableError(FakePodError):
    """Network namespaces were asked for but cannot be used here."""
