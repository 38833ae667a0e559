"""A pod's volumes as folders on the runner's tmpfs, ready to be bind-mounted.

Data flow: :func:`materialize` takes the pod, the fetched :class:`~.spec.Sources`, a
service-account token (when a projected volume asks for one) and the pod's folder, and
writes one folder per volume under ``<pod dir>/volumes/<name>``:

- ``emptyDir``: an empty folder, mode 0777 (setgid and group ``fsGroup`` when set);
- ``secret``, ``configMap``: one file per key (or per ``items`` entry, at its ``path``),
  mode ``defaultMode``/``mode`` (0644 by default), group ``fsGroup`` when set; a missing
  object fails unless ``optional``;
- ``downwardAPI`` and ``projected`` (secret, configMap, downwardAPI and
  serviceAccountToken sources: what the ServiceAccount admission plugin adds to every
  pod that does not opt out);
- ``hostPath``: the host's path itself, bind-mounted (nothing is written).

It returns ``{volume name: host folder}``. Other volume types raise
:class:`~.spec.ConfigError`. Files are written once, at pod start: a Secret changed
later is not propagated (kubelet does so within a minute; documented).

Synchronous file I/O, on one pod's folder; called from the pod's task.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from limpet.devcluster.podrunner.spec import ConfigError, Sources, field_value

DEFAULT_MODE = 0o644


def token_request(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    """(audience, expirationSeconds) of the pod's projected service-account token, if any."""
    for v in pod.get("spec", {}).get("volumes", []):
        for s in (v.get("projected") or {}).get("sources", []):
            t = s.get("serviceAccountToken")
            if t is not None:
                return str(t.get("audience", "")), int(t.get("expirationSeconds", 3600))
    return None


def _safe_relative(path: str, volume: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ConfigError("CreateContainerConfigError", f"volume {volume}: bad item path {path!r}")
    return rel


def _write(root: Path, rel: PurePosixPath, data: bytes, mode: int, fs_group: int | None) -> None:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    target.write_bytes(data)
    if fs_group is not None:
        os.chown(target, 0, fs_group)
        mode |= 0o040
    os.chmod(target, mode)


def _keys(
    root: Path,
    volume: str,
    data: Mapping[str, bytes],
    body: Mapping[str, Any],
    default_mode: int,
    fs_group: int | None,
) -> None:
    items = body.get("items")
    if items is None:
        for key, value in data.items():
            _write(root, _safe_relative(key, volume), value, default_mode, fs_group)
        return
    for item in items:
        if item["key"] not in data:
            if body.get("optional"):
                continue
            raise ConfigError(
                "ContainerCreating",
                f'MountVolume.SetUp failed for volume "{volume}": key "{item["key"]}" not found',
            )
        rel = _safe_relative(item["path"], volume)
        _write(root, rel, data[item["key"]], int(item.get("mode", default_mode)), fs_group)


def _source(
    store: Mapping[str, Mapping[str, bytes]], kind: str, name: str, volume: str, optional: bool
) -> Mapping[str, bytes] | None:
    data = store.get(name)
    if data is None and not optional:
        raise ConfigError(
            "ContainerCreating",
            f'MountVolume.SetUp failed for volume "{volume}": {kind} "{name}" not found',
        )
    return data


def _downward(
    root: Path,
    volume: str,
    items: list[Mapping[str, Any]],
    pod: Mapping[str, Any],
    default_mode: int,
    fs_group: int | None,
    *,
    pod_ip: str,
    host_ip: str,
) -> None:
    for item in items:
        if "fieldRef" not in item:
            raise ConfigError(
                "CreateContainerConfigError",
                f"volume {volume}: only fieldRef items are supported in downwardAPI",
            )
        value = field_value(pod, item["fieldRef"]["fieldPath"], pod_ip=pod_ip, host_ip=host_ip)
        rel = _safe_relative(item["path"], volume)
        _write(root, rel, value.encode(), int(item.get("mode", default_mode)), fs_group)


def materialize(
    pod: Mapping[str, Any],
    pod_dir: Path,
    sources: Sources,
    *,
    token: str | None,
    ca_pem: bytes,
    pod_ip: str,
    host_ip: str,
) -> dict[str, Path]:
    spec = pod.get("spec", {})
    fs_group_raw = (spec.get("securityContext") or {}).get("fsGroup")
    fs_group = None if fs_group_raw is None else int(fs_group_raw)
    out: dict[str, Path] = {}
    for v in spec.get("volumes", []):
        name = v["name"]
        if "hostPath" in v:
            out[name] = Path(v["hostPath"]["path"])
            continue
        root = pod_dir / "volumes" / name
        root.mkdir(parents=True, exist_ok=True)
        out[name] = root
        if "emptyDir" in v:
            if fs_group is not None:
                os.chown(root, 0, fs_group)
            os.chmod(root, 0o2777 if fs_group is not None else 0o777)
            continue
        os.chmod(root, 0o755)
        if "secret" in v:
            body = v["secret"]
            data = _source(
                sources.secrets, "secret", body["secretName"], name, bool(body.get("optional"))
            )
            mode = int(body.get("defaultMode", DEFAULT_MODE))
            _keys(root, name, data or {}, body, mode, fs_group)
        elif "configMap" in v:
            body = v["configMap"]
            data = _source(
                sources.config_maps, "configmap", body["name"], name, bool(body.get("optional"))
            )
            mode = int(body.get("defaultMode", DEFAULT_MODE))
            _keys(root, name, data or {}, body, mode, fs_group)
        elif "downwardAPI" in v:
            body = v["downwardAPI"]
            mode = int(body.get("defaultMode", DEFAULT_MODE))
            _downward(
                root,
                name,
                body.get("items", []),
                pod,
                mode,
                fs_group,
                pod_ip=pod_ip,
                host_ip=host_ip,
            )
        elif "projected" in v:
            _projected(
                root, name, v["projected"], pod, sources, fs_group,
                token=token, ca_pem=ca_pem, pod_ip=pod_ip, host_ip=host_ip,
            )  # fmt: skip
        else:
            kinds = sorted(k for k in v if k != "name")
            raise ConfigError(
                "CreateContainerConfigError",
                f"volume {name}: {', '.join(kinds)} volumes are not supported by the pod runner",
            )
    return out


def _projected(
    root: Path,
    name: str,
    body: Mapping[str, Any],
    pod: Mapping[str, Any],
    sources: Sources,
    fs_group: int | None,
    *,
    token: str | None,
    ca_pem: bytes,
    pod_ip: str,
    host_ip: str,
) -> None:
    mode = int(body.get("defaultMode", DEFAULT_MODE))
    for s in body.get("sources", []):
        if "secret" in s:
            ref = s["secret"]
            data = _source(sources.secrets, "secret", ref["name"], name, bool(ref.get("optional")))
            _keys(root, name, data or {}, ref, mode, fs_group)
        elif "configMap" in s:
            ref = s["configMap"]
            data = sources.config_maps.get(ref["name"])
            if data is None and ref["name"] == "kube-root-ca.crt":
                # Published by kube-controller-manager's root-ca-cert-publisher; until it
                # has run (or where it does not), the runner knows the same CA.
                data = {"ca.crt": ca_pem}
            if data is None:
                data = _source({}, "configmap", ref["name"], name, bool(ref.get("optional")))
            _keys(root, name, data or {}, ref, mode, fs_group)
        elif "downwardAPI" in s:
            items = s["downwardAPI"].get("items", [])
            _downward(root, name, items, pod, mode, fs_group, pod_ip=pod_ip, host_ip=host_ip)
        elif "serviceAccountToken" in s:
            if token is None:
                raise ConfigError("ContainerCreating", f"volume {name}: no token yet")
            rel = _safe_relative(s["serviceAccountToken"]["path"], name)
            _write(root, rel, token.encode(), mode, fs_group)
        else:
            raise ConfigError(
                "CreateContainerConfigError",
                f"volume {name}: projected source {sorted(s)} is not supported",
            )
