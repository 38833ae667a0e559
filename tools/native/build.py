"""Compile the proxy's hot path with mypyc, beside its sources, unless already done.

Usage: ``python tools/native/build.py [--require] [--clean] [--jobs N]``, with the
Python of the environment that imports ``limpet`` (the venv's). The image's build stage
compiles its source tree with the build venv's Python (``--python-executable`` names the
runtime venv, whose packages mypy reads) and copies the result beside the installed
package (``--install DIR``).

The modules are those of ``limpet.proxy.process.native.COMPILED``, the one list. They
are compiled as one mypyc group into C extensions written next to their ``.py`` files
(where ``limpet`` is imported from: ``operator/`` for the editable install, site-packages
in the image), which Python then imports in preference to the sources, plus the group's
shared library ``limpet_native__mypyc`` beside the package. C files, objects
and mypy's cache go to ``<sys.prefix>/native-build``.

Cached: the build's key hashes every source of ``limpet/proxy`` and ``limpet/affinity``
(the compiled modules' types come from both), this script, mypy's version, the C
compiler's and Python's; ``native_build.json`` beside ``native.py`` records it with each
compiled module's source hash (which the proxy's start-up check compares). A warm run
with the same key does nothing.

The same build compiles the C extensions of ``native.C_EXTENSIONS`` (their ``.c`` files
are in the key too), linked with OpenSSL's libcrypto. Without a C compiler, ``Python.h``
or OpenSSL's headers the old extensions are removed and the proxy runs interpreted
(exit 0; with ``--require``, exit 1). ``--clean`` removes them on purpose.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from setuptools import Extension

from limpet.proxy.process import native


def package_root() -> Path:
    """The directory that holds the ``limpet`` package (``operator/`` or site-packages)."""
    import limpet

    return Path(limpet.__file__).resolve().parent.parent


def compiler() -> tuple[str, str] | None:
    """The C compiler's command and version, or None without one, without Python.h or
    without OpenSSL's headers (the C cookie MAC's)."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return None
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return None
    probe = subprocess.run(
        [*cc, "-E", "-x", "c", "-o", os.devnull, "-"],
        input="#include <openssl/sha.h>\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    out = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=False)
    return cc[0], out.stdout.splitlines()[0] if out.stdout else cc[0]


def build_key(root: Path, cc_version: str) -> str:
    import mypy.version

    h = hashlib.sha256()
    for part in (sys.version, mypy.version.__version__, cc_version, native.GROUP):
        h.update(part.encode() + b"\0")
    h.update(Path(__file__).read_bytes())
    for sub in ("limpet/proxy", "limpet/affinity"):
        for path in sorted([*(root / sub).rglob("*.py"), *(root / sub).rglob("*.c")]):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def c_extensions(root: Path) -> list[Extension]:
    """The hand-written C extensions of ``native.C_EXTENSIONS`` (each ``<name>.c``
    beside where its module goes), linked with OpenSSL's libcrypto."""
    return [
        Extension(
            name,
            sources=[str(native.source_of(root, name).relative_to(root))],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Werror"],
        )
        for name in native.C_EXTENSIONS
    ]


def built_files(root: Path) -> list[Path]:
    """Every extension module under ``limpet/`` (the project has no others) and the
    group's shared library beside the package."""
    return [
        *(p for p in (root / "limpet").rglob("*.so") if p.is_file()),
        *root.glob(f"{native.GROUP}__mypyc.*"),
    ]


def clean(root: Path) -> int:
    """Remove the build and its manifest; returns how many extensions went."""
    gone = built_files(root)
    for path in gone:
        path.unlink()
    native.MANIFEST.unlink(missing_ok=True)
    return len(gone)


def install(root: Path, target: Path) -> None:
    """Copy the build (extensions and manifest) beside an installed copy of the same
    sources, as the image's build stage does, with the C extensions' sources: a wheel
    holds no ``.c`` file, and the start-up check compares each with the manifest."""
    c_sources = [native.source_of(root, name) for name in native.C_EXTENSIONS]
    for path in [*built_files(root), native.MANIFEST, *c_sources]:
        dest = target / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)


def compile_group(root: Path, work: Path, jobs: int, python: str) -> None:
    """mypyc's C generation (mypy reading third-party packages from ``python``'s
    environment), then setuptools' build_ext --inplace, with ``root`` as the working
    directory so that module names come out right."""
    from mypyc.build import mypycify
    from setuptools import setup

    paths = [str(native.source_of(root, name).relative_to(root)) for name in native.COMPILED]
    cwd = Path.cwd()
    os.chdir(root)
    try:
        extensions = mypycify(
            ["--cache-dir", str(work / "mypy_cache"), "--python-executable", python, *paths],
            target_dir=str(work / "c"),
            group_name=native.GROUP,
        )
        setup(
            name="limpet-native",
            ext_modules=[*extensions, *c_extensions(root)],
            script_args=[
                "--quiet",
                "build_ext",
                "--inplace",
                "--build-temp",
                str(work / "temp"),
                "--parallel",
                str(jobs),
            ],
        )
    finally:
        os.chdir(cwd)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require", action="store_true", help="fail without a C compiler")
    parser.add_argument("--clean", action="store_true", help="remove the build: run interpreted")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--python-executable",
        default=sys.executable,
        help="the Python whose packages the compiled modules import (mypy reads them)",
    )
    parser.add_argument(
        "--install", metavar="DIR", type=Path, help="then copy the build beside DIR/limpet"
    )
    args = parser.parse_args(argv)
    root = package_root()
    if args.clean:
        print(f"native build: removed {clean(root)} extension modules; the proxy runs interpreted")
        return 0
    cc = compiler()
    if cc is None:
        clean(root)
        print(
            "native build: no C compiler, Python.h or OpenSSL headers (libssl-dev); "
            "the proxy runs interpreted",
            file=sys.stderr,
        )
        return 1 if args.require else 0
    key = build_key(root, cc[1])
    try:
        done = json.loads(native.MANIFEST.read_text()).get("key") == key
    except (OSError, ValueError):
        done = False
    if done and native.build_mode().mode == "compiled":
        print(
            f"native build up to date: {len(native.COMPILED)} modules compiled with mypyc, "
            f"{len(native.C_EXTENSIONS)} in C"
        )
    else:
        rc = build(root, key, cc[1], args.jobs, args.python_executable)
        if rc:
            return rc
    if args.install is not None:
        install(root, args.install)
    return 0


def build(root: Path, key: str, cc_version: str, jobs: int, python: str) -> int:
    """Clean, compile, write the manifest; 0 if every module then loads compiled."""
    start = time.monotonic()
    clean(root)
    work = Path(sys.prefix) / "native-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    compile_group(root, work, jobs, python)
    modules = {
        name: native.source_hash(native.source_of(root, name))
        for name in (*native.COMPILED, *native.C_EXTENSIONS)
    }
    native.MANIFEST.write_text(json.dumps({"key": key, "compiler": cc_version, "modules": modules}))
    importlib.invalidate_caches()
    mode = native.build_mode()
    print(
        f"native build: {len(native.COMPILED)} modules compiled with mypyc and "
        f"{len(native.C_EXTENSIONS)} in C in "
        f"{time.monotonic() - start:.0f} s ({cc_version}); proxy hot path {mode.mode}"
    )
    return 0 if mode.mode == "compiled" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
