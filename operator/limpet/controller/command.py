"""``limpet operator``: run the StickyService operator (kopf, in-process).

Data flow: command-line options -> :class:`~.settings.OperatorSettings`; the cluster
from ``--kubeconfig``, ``$KUBECONFIG`` or the pod's service account (like kubectl);
then one event loop runs kopf with our registry (:mod:`.handlers`), one API client and
one HTTP session for the proxies' admin APIs, until SIGINT/SIGTERM.

Before kopf starts, the operator makes sure its peering object exists (unless
``--standalone``): replicas then coordinate through kopf peering, and the replica with
the highest ``--priority`` (random by default, so replicas never tie) is the active one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
from types import MappingProxyType

import aiohttp

from limpet.controller.kube.client import ApiError, KubeClient, Resource
from limpet.controller.kube.config import ConfigError, load_cluster_config
from limpet.controller.kube.watchhub import WatchHub
from limpet.controller.model.settings import (
    DEFAULT_PROXY_IMAGE,
    DebounceSettings,
    OperatorSettings,
    PushSettings,
)

CLUSTER_PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings")
PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings")


def _override(text: str) -> tuple[str, str]:
    address, sep, target = text.partition("=")
    host, colon, port = target.rpartition(":")
    if not sep or not address or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDRESS=HOST:PORT, got {text!r}")
    return address, target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: $KUBECONFIG, "
        "~/.kube/config, else the in-cluster service account)",
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="serve only this namespace (repeatable); default: cluster-wide",
    )
    parser.add_argument(
        "--standalone", action="store_true", help="no kopf peering: a single replica"
    )
    parser.add_argument(
        "--peering", default="limpet", help="peering object name (default: %(default)s)"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest live replica is active (default: random)",
    )
    parser.add_argument(
        "--proxy-image",
        default=DEFAULT_PROXY_IMAGE,
        help="image of managed proxies (default: %(default)s)",
    )
    parser.add_argument(
        "--proxy-replicas",
        type=int,
        default=2,
        help="managed proxies when spec.proxy.replicas is unset (default: 2)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=2.0,
        help="seconds between reads of each proxy's stats (default: 2)",
    )
    parser.add_argument(
        "--gone-after",
        type=float,
        default=30.0,
        help="seconds a vanished backend stays Failed before Gone (default: 30)",
    )
    parser.add_argument(
        "--forget-after",
        type=float,
        default=3600.0,
        help="seconds a Gone backend stays in the plan (default: 3600)",
    )
    parser.add_argument(
        "--admin-address-override",
        action="append",
        type=_override,
        default=[],
        metavar="ADDRESS=HOST:PORT",
        help="TEST ONLY: reach the proxy listed at ADDRESS through HOST:PORT (for proxies "
        "on loopback behind placeholder EndpointSlice addresses)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    return OperatorSettings(
        namespaces=tuple(args.namespace),
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        proxy_image=args.proxy_image,
        proxy_replicas=args.proxy_replicas,
        liveness_endpoint=args.liveness,
        debounce=DebounceSettings(),
        push=PushSettings(stats_interval=args.stats_interval),
        gone_after=args.gone_after,
        forget_after=args.forget_after,
        admin_address_overrides=MappingProxyType(dict(args.admin_address_override)),
    )


async def ensure_peering(client: KubeClient, settings: OperatorSettings) -> None:
    """Create the kopf peering object(s) this operator announces itself in, if missing."""
    targets = (
        [(PEERINGS, ns) for ns in settings.namespaces]
        if settings.namespaces
        else [(CLUSTER_PEERINGS, None)]
    )
    for resource, ns in targets:
        body = {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering" if ns else "ClusterKopfPeering",
            "metadata": {"name": settings.peering_name},
        }
        try:
            await client.create(resource.path(ns), body)
        except ApiError as exc:
            if exc.status != 409:
                raise


async def preflight(client: KubeClient, settings: OperatorSettings) -> str | None:
    """Check what must exist before kopf starts; a sentence saying what is missing, or None."""
    try:
        await client.request("GET", "/apis/limpet.dev/v1alpha1")
    except ApiError as exc:
        if exc.status == 404:
            return (
                "the StickyService CRD is not installed: kubectl apply -f crds/stickyservice.yaml"
            )
        return f"cannot reach the API server: {exc}"
    if not settings.standalone:
        try:
            await ensure_peering(client, settings)
        except ApiError as exc:
            if exc.status == 404:
                return (
                    "kopf's peering CRDs are not installed: kubectl apply -f "
                    "crds/kopf-peering.yaml, or run a single replica with --standalone"
                )
            return f"cannot create the peering object {settings.peering_name!r}: {exc}"
    return None


async def main(args: argparse.Namespace) -> int:
    import kopf

    from limpet.controller.handlers import Runtime, build_registry, kopf_settings

    settings = settings_from_args(args)
    try:
        config = load_cluster_config(args.kubeconfig, args.context)
    except ConfigError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 2
    log = logging.getLogger(__name__)
    async with (
        KubeClient(config) as client,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        problem = await preflight(client, settings)
        if problem is not None:
            log.error("%s", problem)
            return 2
        hub = WatchHub(client, backoff=settings.retry)
        runtime = Runtime(config=config, client=client, hub=hub, http=http, settings=settings)
        try:
            await kopf.operator(
                registry=build_registry(runtime),
                settings=kopf_settings(settings),
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                standalone=settings.standalone,
                priority=settings.priority,
                peering_name=None if settings.standalone else settings.peering_name,
                liveness_endpoint=settings.liveness_endpoint,
            )
        finally:
            await hub.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf's own per-event chatter is debug-level for us.
    logging.getLogger("kopf").setLevel(max(logging.INFO, getattr(logging, args.log_level)))
    return asyncio.run(main(args))
