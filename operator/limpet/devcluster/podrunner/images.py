"""The image table: which local executables stand in for which container image.

There is no container runtime here, so an image is a *description* of a filesystem that
already exists on this machine: the ``PATH`` under which the container's command is
looked up, the image's ``ENTRYPOINT``/``CMD``, its user, working directory and
environment, mirroring what the image's Dockerfile says. The table is explicit: an
image that is not in it is never guessed; the pod gets ``ErrImagePull`` with the list of
images this runner knows.

Default table (:func:`default_table`):

- ``limpet`` (also ``ghcr.io/limpet-dev/limpet``, any tag or digest): this project's
  virtualenv (the interpreter that runs the pod runner), as the Dockerfile's runtime
  stage: ``ENTRYPOINT ["limpet"]``, ``CMD ["--help"]``, ``USER 65532:65532``,
  ``WORKDIR /tmp``. The sample app (examples/app, ``python -m limpet.demo.backend``)
  runs from this image too.
- ``busybox`` (also ``docker.io/library/busybox``): the host's ``/bin/sh`` and
  coreutils, as root, like the real image; tests use it for shell commands.

Pure data; no I/O except resolving the virtualenv's folder.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    name: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: int = 0
    group: int = 0
    working_dir: str = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    """The image's environment; ``PATH`` decides where commands are found."""
    paths: tuple[str, ...] = ()
    """The folders that make up the image: the launcher makes them reachable by the
    container's user even where they sit below a folder only root may enter."""


def normalize(reference: str) -> str:
    """``ghcr.io/x/y:1.0@sha256:..`` -> ``ghcr.io/x/y``; ``busybox:1`` -> ``busybox``."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name


@dataclass(frozen=True, slots=True)
class ImageTable:
    images: Mapping[str, Image]
    """By normalized reference (see :func:`normalize`)."""

    def resolve(self, reference: str) -> Image | None:
        return self.images.get(normalize(reference))

    def known(self) -> list[str]:
        return sorted(self.images)


def limpet_image(venv_bin: Path) -> Image:
    import limpet

    source = Path(limpet.__file__).resolve().parent.parent
    return Image(
        name="limpet",
        entrypoint=("limpet",),
        cmd=("--help",),
        user=65532,
        group=65532,
        working_dir="/tmp",
        env={
            "PATH": f"{venv_bin}:{SYSTEM_PATH}",
            "HOME": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        },
        # The virtualenv, the interpreter it was made from, and the (editable) source.
        paths=(str(venv_bin.parent), sys.base_prefix, str(source)),
    )


def busybox_image() -> Image:
    return Image(name="busybox", cmd=("sh",), env={"PATH": SYSTEM_PATH})


def default_table(venv_bin: Path | None = None) -> ImageTable:
    limpet = limpet_image(venv_bin or Path(sys.executable).parent)
    busybox = busybox_image()
    return ImageTable(
        {
            "limpet": limpet,
            "ghcr.io/limpet-dev/limpet": limpet,
            "busybox": busybox,
            "docker.io/library/busybox": busybox,
        }
    )
