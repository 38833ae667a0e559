"""From a Pod's spec to what the runner executes: one :class:`ContainerPlan` per container.

Data flow: :func:`referenced_objects` names the Secrets and ConfigMaps a pod's env and
volumes need; the caller fetches them into :class:`Sources`; :func:`container_plan` then
resolves, purely, the image (from the :class:`~.images.ImageTable`), the argv (command
and args over the image's entrypoint and cmd, with ``$(VAR)`` expansion), the
environment (values, the downward API, Secret and ConfigMap keys, ``envFrom``), the user
and groups (container over pod over image), the security options the runner can
enforce, the mounts and the probes and preStop hook. Whatever cannot be honoured raises
:class:`ConfigError` with the reason a kubelet would show (``ErrImagePull``,
``CreateContainerConfigError``) and a message naming the field.

Pure functions and frozen dataclasses; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from limpet.devcluster.podrunner.images import Image, ImageTable

JsonObj = dict[str, Any]
ALL_CAPABILITIES = "ALL"


class ConfigError(Exception):
    """A container cannot start as specified; ``reason`` is the waiting reason to show."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Sources:
    """The Secrets' and ConfigMaps' data (decoded to bytes) by name, in the pod's namespace."""

    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    kind: Literal["http", "tcp", "exec", "grpc"]
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Hook:
    kind: Literal["sleep", "exec", "http", "tcp"]
    seconds: float = 0.0
    command: tuple[str, ...] = ()
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Mount:
    path: str
    volume: str
    sub_path: str = ""
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerPlan:
    name: str
    image: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    read_only_root: bool = False
    no_new_privs: bool = False
    drop_capabilities: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    pre_stop: Hook | None = None
    image_paths: tuple[str, ...] = ()
    termination_message_path: str = "/dev/termination-log"
    fallback_to_logs_on_error: bool = False


# -- references ---------------------------------------------------------------------------------


def referenced_objects(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(Secret names, ConfigMap names) that the pod's env, envFrom and volumes read."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    spec = pod.get("spec", {})
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for e in c.get("env", []):
            src = e.get("valueFrom") or {}
            if "secretKeyRef" in src:
                secrets.add(src["secretKeyRef"]["name"])
            if "configMapKeyRef" in src:
                config_maps.add(src["configMapKeyRef"]["name"])
        for e in c.get("envFrom", []):
            if "secretRef" in e:
                secrets.add(e["secretRef"]["name"])
            if "configMapRef" in e:
                config_maps.add(e["configMapRef"]["name"])
    for v in spec.get("volumes", []):
        if "secret" in v:
            secrets.add(v["secret"]["secretName"])
        if "configMap" in v:
            config_maps.add(v["configMap"]["name"])
        for s in (v.get("projected") or {}).get("sources", []):
            if "secret" in s:
                secrets.add(s["secret"]["name"])
            if "configMap" in s:
                config_maps.add(s["configMap"]["name"])
    return secrets, config_maps


def check_supported(pod: Mapping[str, Any]) -> None:
    """Refuse, clearly, what the runner cannot honour at the pod level."""
    spec = pod.get("spec", {})
    for field_name in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field_name):
            raise ConfigError(
                "CreateContainerConfigError",
                f"{field_name}: true is not supported by the pod runner (pods get their own "
                "network namespace)",
            )
    for c in spec.get("initContainers", []):
        if c.get("restartPolicy") == "Always":
            raise ConfigError(
                "CreateContainerConfigError",
                f"init container {c['name']}: sidecars (restartPolicy: Always) are not "
                "supported by the pod runner",
            )


# -- the downward API ---------------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping[str, Any], path: str, *, pod_ip: str, host_ip: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath`` for this pod."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = _SUBSCRIPT.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError("CreateContainerConfigError", f"unsupported fieldRef.fieldPath {path!r}")


# -- $(VAR) expansion ---------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names expand, ``$$`` escapes, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, text)


# -- environment --------------------------------------------------------------------------------


def _key(
    kind: str, store: Mapping[str, Mapping[str, bytes]], ref: Mapping[str, Any], var: str
) -> str | None:
    data = store.get(ref["name"])
    optional = bool(ref.get("optional", False))
    if data is None or ref["key"] not in data:
        if optional:
            return None
        what = f'{kind} "{ref["name"]}"' + ("" if data is None else f' key "{ref["key"]}"')
        raise ConfigError("CreateContainerConfigError", f"{what} not found (env {var})")
    return data[ref["key"]].decode("utf-8", errors="replace")


def container_env(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    image: Image,
    sources: Sources,
    *,
    pod_ip: str,
    host_ip: str,
    service_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    # As a kubelet: the image's env, then the services' (the container's own env wins).
    env: dict[str, str] = dict(image.env) | dict(service_env or {})
    env["HOSTNAME"] = pod.get("metadata", {}).get("name", "")
    for e in container.get("envFrom", []):
        prefix = e.get("prefix", "")
        kind, ref = (
            ("secret", e["secretRef"]) if "secretRef" in e else ("configmap", e["configMapRef"])
        )
        store = sources.secrets if kind == "secret" else sources.config_maps
        data = store.get(ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ConfigError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
        for k, v in data.items():
            env[prefix + k] = v.decode("utf-8", errors="replace")
    for e in container.get("env", []):
        name = e["name"]
        src = e.get("valueFrom")
        if src is None:
            env[name] = expand(e.get("value", ""), env)
        elif "fieldRef" in src:
            env[name] = field_value(
                pod, src["fieldRef"]["fieldPath"], pod_ip=pod_ip, host_ip=host_ip
            )
        elif "secretKeyRef" in src:
            value = _key("secret", sources.secrets, src["secretKeyRef"], name)
            if value is not None:
                env[name] = value
        elif "configMapKeyRef" in src:
            value = _key("configmap", sources.config_maps, src["configMapKeyRef"], name)
            if value is not None:
                env[name] = value
        else:
            raise ConfigError(
                "CreateContainerConfigError",
                f"env {name}: valueFrom {sorted(src)} is not supported by the pod runner",
            )
    return env


# -- probes and hooks ---------------------------------------------------------------------------


def _port(container: Mapping[str, Any], port: int | str, where: str) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ConfigError("CreateContainerConfigError", f"{where}: no container port named {port!r}")


def _headers(action: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((h["name"], h["value"]) for h in action.get("httpHeaders", []))


def probe(container: Mapping[str, Any], body: Mapping[str, Any] | None, what: str) -> Probe | None:
    if not body:
        return None
    timing: dict[str, Any] = {
        "initial_delay": float(body.get("initialDelaySeconds", 0)),
        "period": float(body.get("periodSeconds", 10)),
        "timeout": float(body.get("timeoutSeconds", 1)),
        "success_threshold": int(body.get("successThreshold", 1)),
        "failure_threshold": int(body.get("failureThreshold", 3)),
    }
    where = f"{container['name']}.{what}"
    if "httpGet" in body:
        a = body["httpGet"]
        return Probe(
            kind="http",
            port=_port(container, a["port"], where),
            path=a.get("path", "/"),
            scheme=a.get("scheme", "HTTP"),
            headers=_headers(a),
            **timing,
        )
    if "tcpSocket" in body:
        return Probe(kind="tcp", port=_port(container, body["tcpSocket"]["port"], where), **timing)
    if "exec" in body:
        return Probe(kind="exec", command=tuple(body["exec"].get("command", [])), **timing)
    if "grpc" in body:
        return Probe(kind="grpc", port=int(body["grpc"]["port"]), **timing)
    raise ConfigError("CreateContainerConfigError", f"{where}: no probe handler")


def pre_stop(container: Mapping[str, Any]) -> Hook | None:
    body = (container.get("lifecycle") or {}).get("preStop")
    if not body:
        return None
    where = f"{container['name']}.lifecycle.preStop"
    if "sleep" in body:
        return Hook(kind="sleep", seconds=float(body["sleep"]["seconds"]))
    if "exec" in body:
        return Hook(kind="exec", command=tuple(body["exec"].get("command", [])))
    if "httpGet" in body:
        a = body["httpGet"]
        return Hook(
            kind="http",
            port=_port(container, a["port"], where),
            path=a.get("path", "/"),
            scheme=a.get("scheme", "HTTP"),
            headers=_headers(a),
        )
    if "tcpSocket" in body:
        return Hook(kind="tcp", port=_port(container, body["tcpSocket"]["port"], where))
    raise ConfigError("CreateContainerConfigError", f"{where}: no handler")


# -- the plan -----------------------------------------------------------------------------------


def _security(
    pod: Mapping[str, Any], container: Mapping[str, Any], image: Image
) -> tuple[int, int, tuple[int, ...], bool]:
    psc = pod.get("spec", {}).get("securityContext") or {}
    csc = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return csc.get(key, psc.get(key))

    uid = pick("runAsUser")
    gid = pick("runAsGroup")
    uid = image.user if uid is None else int(uid)
    gid = image.group if gid is None else int(gid)
    if pick("runAsNonRoot") and uid == 0:
        meta = pod.get("metadata", {})
        raise ConfigError(
            "CreateContainerConfigError",
            "container has runAsNonRoot and image will run as root "
            f'(pod: "{meta.get("name")}_{meta.get("namespace")}", container: {container["name"]})',
        )
    groups = [int(g) for g in psc.get("supplementalGroups", [])]
    if psc.get("fsGroup") is not None:
        groups.append(int(psc["fsGroup"]))
    return uid, gid, tuple(dict.fromkeys(groups)), bool(csc.get("readOnlyRootFilesystem"))


def _argv(container: Mapping[str, Any], image: Image, env: Mapping[str, str]) -> tuple[str, ...]:
    command: Sequence[str] = container.get("command") or image.entrypoint
    if container.get("command"):
        args: Sequence[str] = container.get("args") or ()
    else:
        args = container.get("args") or image.cmd
    argv = tuple(expand(a, env) for a in [*command, *args])
    if not argv:
        raise ConfigError(
            "CreateContainerConfigError", f"{container['name']}: no command specified"
        )
    return argv


def _check_image_visible(container: Mapping[str, Any], image: Image) -> None:
    """A volume mounted over the image's own files would hide them, as on a real node;
    the image here is the host's virtualenv, so a checkout under ``/tmp`` meets an
    ``emptyDir`` at ``/tmp``. Say so rather than fail later with "not found in $PATH"."""
    for m in container.get("volumeMounts", []):
        mount = PurePosixPath(m["mountPath"])
        for path in map(PurePosixPath, image.paths):
            if path == mount or mount in path.parents or path in mount.parents:
                raise ConfigError(
                    "CreateContainerConfigError",
                    f'volume "{m["name"]}" mounted at {mount} would hide (part of) the '
                    f"image's {path}; run the pod runner from a checkout and virtualenv outside "
                    f"{mount} (see docs/devcluster.md)",
                )


def container_plan(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    table: ImageTable,
    sources: Sources,
    *,
    pod_ip: str,
    host_ip: str,
    service_env: Mapping[str, str] | None = None,
) -> ContainerPlan:
    reference = str(container.get("image", ""))
    image = table.resolve(reference)
    if image is None:
        raise ConfigError(
            "ErrImagePull",
            f'image "{reference}" is not in the pod runner\'s image table '
            f"(known: {', '.join(table.known())}); see docs/devcluster.md",
        )
    uid, gid, groups, read_only = _security(pod, container, image)
    _check_image_visible(container, image)
    env = container_env(
        container, pod, image, sources, pod_ip=pod_ip, host_ip=host_ip, service_env=service_env
    )
    csc = container.get("securityContext") or {}
    drop = tuple((csc.get("capabilities") or {}).get("drop", []))
    return ContainerPlan(
        name=container["name"],
        image=reference,
        argv=_argv(container, image, env),
        env=tuple(env.items()),
        working_dir=container.get("workingDir") or image.working_dir,
        uid=uid,
        gid=gid,
        groups=groups,
        read_only_root=read_only,
        no_new_privs=csc.get("allowPrivilegeEscalation") is False,
        drop_capabilities=drop,
        mounts=tuple(
            Mount(
                path=m["mountPath"],
                volume=m["name"],
                sub_path=m.get("subPath", ""),
                read_only=bool(m.get("readOnly", False)),
            )
            for m in container.get("volumeMounts", [])
        ),
        readiness=probe(container, container.get("readinessProbe"), "readinessProbe"),
        liveness=probe(container, container.get("livenessProbe"), "livenessProbe"),
        startup=probe(container, container.get("startupProbe"), "startupProbe"),
        pre_stop=pre_stop(container),
        image_paths=image.paths,
        termination_message_path=container.get("terminationMessagePath") or "/dev/termination-log",
        fallback_to_logs_on_error=container.get("terminationMessagePolicy")
        == "FallbackToLogsOnError",
    )
