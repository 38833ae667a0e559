"""``tools/native/build.py``, the mypyc build of the proxy's hot path, run as ``make``
runs it: a subprocess, on a copy of the package so that the tree under test keeps its
own build.

What is checked: ``--clean`` and a machine without a C compiler leave a copy that runs
interpreted (and ``--require`` fails there); the build key changes with every source
the compiled modules are typed from and with the compiler, and with nothing else;
``install`` puts every extension, the manifest and the C sources beside another copy of
the sources (a wheel's: no C source), which then reports itself compiled.
A real compile is not repeated here: ``make test`` runs one before pytest, and
``tests/proxy/process/test_native.py`` checks that every listed module then loads compiled.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import limpet
from limpet.proxy.process import native

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "native" / "build.py"
REAL_ROOT = Path(limpet.__file__).resolve().parent.parent
EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("limpet_native_build", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(EXTENSIONS))


@pytest.fixture
def copy_root(tmp_path: Path) -> Path:
    """A copy of the package, with whatever build the tree has; plus, so that there is
    always something to remove, one fake extension beside a compiled module."""
    root = tmp_path / "site"
    shutil.copytree(
        REAL_ROOT / "limpet", root / "limpet", ignore=shutil.ignore_patterns("__pycache__")
    )
    for lib in REAL_ROOT.glob(f"{native.GROUP}__mypyc.*"):
        shutil.copy2(lib, root / lib.name)
    fake = root / (native.COMPILED[0].replace(".", "/") + EXTENSIONS[0])
    if not fake.exists():
        fake.write_bytes(b"not an ELF file")
    (root / "limpet/proxy/process/native_build.json").write_text('{"key": "x"}')
    return root


def _run(root: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _mode_of_copy(root: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import limpet; from limpet.proxy.process import native;"
            "print(limpet.__file__); print(native.build_mode().mode)",
        ],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out[0].startswith(str(root)), out  # the copy was imported, not the tree
    return out[1]


def test_clean_removes_every_extension_and_the_manifest(copy_root: Path) -> None:
    before = _extensions(copy_root)
    real_before = _extensions(REAL_ROOT)
    result = _run(copy_root, "--clean")
    assert result.returncode == 0, result.stderr
    assert f"removed {len(before)} extension modules" in result.stdout
    assert _extensions(copy_root) == []
    assert not (copy_root / "limpet/proxy/process/native_build.json").exists()
    assert _mode_of_copy(copy_root) == "interpreted"
    assert _extensions(REAL_ROOT) == real_before


def test_without_a_compiler_the_copy_runs_interpreted_and_require_fails(
    copy_root: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "no-cc"
    empty.mkdir()
    required = _run(copy_root, "--require", path=str(empty))
    assert required.returncode == 1
    assert "no C compiler" in required.stderr
    assert _extensions(copy_root) == []
    leftover = copy_root / (native.COMPILED[-1].replace(".", "/") + EXTENSIONS[0])
    leftover.write_bytes(b"an old build")
    optional = _run(copy_root, path=str(empty))
    assert optional.returncode == 0, optional.stderr
    assert "runs interpreted" in optional.stderr
    assert not leftover.exists()
    assert _mode_of_copy(copy_root) == "interpreted"


def test_the_build_key_follows_the_typed_sources_and_the_compiler(copy_root: Path) -> None:
    build = _load_script()
    key = build.build_key(copy_root, "gcc 12")
    assert build.build_key(copy_root, "gcc 12") == key
    assert build.build_key(copy_root, "gcc 13") != key
    outside = copy_root / "limpet/controller/__init__.py"
    outside.write_text(outside.read_text() + "\n# unrelated\n")
    assert build.build_key(copy_root, "gcc 12") == key
    for sub in ("proxy/engine/fields.py", "affinity/__init__.py", "proxy/session/native_mac.c"):
        source = copy_root / "limpet" / sub
        original = source.read_text()
        source.write_text(original + "\n# edited\n")
        assert build.build_key(copy_root, "gcc 12") != key, sub
        source.write_text(original)
        assert build.build_key(copy_root, "gcc 12") == key, sub


def _not_in_a_wheel(directory: str, names: list[str]) -> list[str]:
    """``copytree``'s filter: every file but the Python sources and ``py.typed``."""
    return [
        n
        for n in names
        if not (Path(directory) / n).is_dir() and not n.endswith((".py", "py.typed"))
    ]


@pytest.mark.skipif(not native.MANIFEST.is_file(), reason="the tree has no native build")
def test_install_puts_the_build_beside_another_copy(tmp_path: Path) -> None:
    build = _load_script()
    target = tmp_path / "site-packages"
    # What a wheel installs: the package's Python sources, no C source, no build.
    shutil.copytree(REAL_ROOT / "limpet", target / "limpet", ignore=_not_in_a_wheel)
    build.install(REAL_ROOT, target)
    assert _mode_of_copy(target) == "compiled"  # what the image's `limpet proxy --build` checks
    built = build.built_files(REAL_ROOT)
    # one per module, one per C extension, plus the group library
    assert len(built) == len(native.COMPILED) + len(native.C_EXTENSIONS) + 1
    c_sources = [native.source_of(REAL_ROOT, name) for name in native.C_EXTENSIONS]
    for path in [*built, native.MANIFEST, *c_sources]:
        copied = target / path.relative_to(REAL_ROOT)
        assert copied.read_bytes() == path.read_bytes(), copied
