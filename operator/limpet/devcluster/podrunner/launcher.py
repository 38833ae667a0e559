"""The process that becomes a container: namespaces, mounts, user, then ``exec``.

Run as root by the pod runner, once per container start::

    python -m limpet.devcluster.podrunner.launcher run SPEC.json
    python -m limpet.devcluster.podrunner.launcher exec SPEC.json PID -- CMD...

``run`` joins the pod's network namespace (``/run/netns/<name>``, made by the runner and
checked), makes a private mount namespace (``unshare(CLONE_NEWNS)``, propagation
private) and a private root: an overlay of the host's ``/`` whose writable layer is on the
pod's tmpfs, with the host's other mounts (``/proc``, ``/sys`` ...) bound back in, and a
private ``/dev`` (:func:`make_dev`: a few devices and a ``/dev/shm`` of its own; the
host's ``/dev/shm``, with the runner's folders, stays out of sight). In it, it mounts
the volumes at their ``mountPath`` (bind mounts of the runner's volume folders; mount
points are made in the overlay, never on the host) and the container's
termination-message file (``/dev/termination-log`` by default), makes the image's
folders reachable by the container's user (:func:`expose`), remounts the root read-only for
``readOnlyRootFilesystem``, ``chroot``s into it, drops capabilities from the bounding
set, sets ``no_new_privs`` (``allowPrivilegeEscalation: false``), switches to the
container's groups and user, changes to its working directory and ``exec``s its command
with its environment (``PATH`` from the image table). Its PID is the container's PID.
``exec`` enters the namespaces of a running container (exec probes and hooks) as its
user, with its environment.

A failure before ``exec`` is written to ``SPEC.json``'s ``error_file`` (the runner shows
it as the container's ``StartError``) and exits 128. Single-threaded by design
(``setns`` of a mount namespace requires it); imports only the standard library.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]
_libc = ctypes.CDLL(None, use_errno=True)


class LaunchError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def _setns(path: str, kind: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, kind), f"setns {path}")
    finally:
        os.close(fd)


def _top_level_mounts() -> list[str]:
    """Mount points right below ``/`` in the mount tree (``/proc``, ``/dev`` ...)."""
    points = sorted(
        {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    )
    top: list[str] = []
    for p in points:
        if p != "/" and not any(Path(p).is_relative_to(t) for t in top):
            top.append(p)
    return top


def make_root(scratch: Path) -> Path:
    """A pod-private root: an overlay of the host's ``/`` (writes go to a fresh upper
    layer on the pod's tmpfs, so mount points can be made anywhere and the host's files
    are never touched) with the host's other mounts bound back in."""
    layer = scratch / "rootfs"
    shutil.rmtree(layer, ignore_errors=True)  # a restarted container gets a fresh layer
    upper, work, root = layer / "upper", layer / "work", layer / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True)
    _mount("overlay", str(root), "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    for point in _top_level_mounts():
        target = root / point.lstrip("/")
        if target.is_dir():
            _mount(point, str(target), None, MS_BIND | MS_REC)
    return root


def in_root(root: Path, path: str) -> Path:
    """``path`` inside ``root``, its symlinks followed as after a chroot (an absolute link
    is relative to ``root``): ``/var/run -> /run`` must not lead a mount point out of the
    container's root onto the host's ``/run``."""
    parts = list(Path(path.lstrip("/")).parts)
    current = root
    for _ in range(256):  # a link loop ends here, not in recursion
        if not parts:
            return current
        part = parts.pop(0)
        candidate = current / part
        if part == "..":
            current = current.parent if current != root else root
        elif candidate.is_symlink():
            link = os.readlink(candidate)
            current = root if link.startswith("/") else current
            parts = list(Path(link.lstrip("/")).parts) + parts
        elif part != ".":
            current = candidate
    raise OSError(errno.ELOOP, f"too many symlinks in {path}")


DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def make_dev(root: Path) -> None:
    """A private ``/dev`` as a container runtime makes it: a tmpfs with the harmless
    devices bound in, ``/dev/shm`` of its own, and the usual links. The host's other
    devices (and its ``/dev/shm``, where the runner keeps its folders) stay out of sight."""
    dev = root / "dev"
    _mount("dev", str(dev), "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for name in DEVICES:
        (dev / name).touch()
        _mount(f"/dev/{name}", str(dev / name), None, MS_BIND)
    (dev / "shm").mkdir()
    _mount("shm", str(dev / "shm"), "tmpfs", MS_NOSUID, "mode=1777,size=64m")
    for link, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        (dev / link).symlink_to(target)


def mount_volumes(spec: dict[str, Any], root: Path) -> None:
    for m in sorted(spec["mounts"], key=lambda m: len(Path(m["target"]).parts)):
        target = in_root(root, m["target"])
        source = Path(m["source"])
        if not target.exists():
            if source.is_dir():
                target.mkdir(parents=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
        _mount(str(source), str(target), None, MS_BIND | MS_REC)
        if m["read_only"]:
            _mount(None, str(target), None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _hidden_ancestor(path: Path) -> Path | None:
    """The highest folder above ``path`` that other users cannot traverse, if any."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def expose(paths: list[str], scratch: Path, root: Path) -> list[Path]:
    """Make the image's files reachable by any user without touching the host.

    The image's files may sit below a folder only root may enter (a pyenv interpreter
    under /root). Bind each path aside, cover that folder with an empty tmpfs (mode
    0755) and bind the paths back at their places: the container sees exactly the
    image's files there and nothing else of the folder. Returns the tmpfs mounts.
    """
    groups: dict[Path, list[Path]] = {}
    for p in map(Path, paths):
        hidden = _hidden_ancestor(p)
        if hidden is not None and p.exists():
            groups.setdefault(hidden, []).append(p)
    covers = []
    for i, (hidden, inside) in enumerate(groups.items()):
        aside = []
        for j, p in enumerate(inside):
            stash = scratch / f"expose-{i}-{j}"
            stash.mkdir(parents=True, exist_ok=True)
            _mount(str(p), str(stash), None, MS_BIND | MS_REC)
            aside.append(stash)
        cover = root / str(hidden).lstrip("/")
        _mount("image", str(cover), "tmpfs", 0, "mode=0755")
        covers.append(cover)
        for p, stash in zip(inside, aside, strict=True):
            place = root / str(p).lstrip("/")
            place.mkdir(parents=True, exist_ok=True)
            _mount(str(stash), str(place), None, MS_BIND | MS_REC)
    return covers


def drop_privileges(spec: dict[str, Any]) -> None:
    drop = spec["drop_capabilities"]
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    if "ALL" in drop:
        caps = list(range(last + 1))
    else:
        caps = [CAPABILITIES.index(c.upper().removeprefix("CAP_")) for c in drop]
    for cap in caps:
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    if spec["no_new_privs"]:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])


def _exec(spec: dict[str, Any], argv: list[str]) -> None:
    os.chdir(spec["working_dir"])
    env = dict(spec["env"])
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise LaunchError(f'exec: "{argv[0]}": executable file not found in $PATH') from None


def run(spec: dict[str, Any]) -> None:
    scratch = Path(spec["scratch"])
    _setns(f"/run/netns/{spec['netns']}", CLONE_NEWNET)
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = make_root(scratch)
    make_dev(root)
    mount_volumes(spec, root)
    covers = expose(spec["image_paths"], scratch, root)
    if spec["read_only_root"]:
        for path in [root, *covers]:
            _mount(None, str(path), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.chroot(root)
    os.chdir("/")
    drop_privileges(spec)
    _exec(spec, spec["argv"])


def enter(spec: dict[str, Any], pid: int, argv: list[str]) -> None:
    root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    _setns(f"/proc/{pid}/ns/net", CLONE_NEWNET)
    _setns(f"/proc/{pid}/ns/mnt", CLONE_NEWNS)
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    drop_privileges(spec)
    _exec(spec, argv)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    # Opened now: /dev/shm (where it lives) is hidden once the mounts are made. Not
    # inherited by the command (Python's descriptors are close-on-exec).
    error_fd = (
        os.open(spec["error_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if argv[0] == "run"
        else None
    )
    try:
        if argv[0] == "run":
            run(spec)
        else:
            enter(spec, int(argv[2]), argv[argv.index("--") + 1 :])
    except (LaunchError, OSError) as e:
        message = str(e)
        if error_fd is not None:
            os.write(error_fd, message.encode())
        print(f"limpet pod runner: {message}", file=sys.stderr, flush=True)
        return 128
    return 0  # not reached: exec replaced us


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
