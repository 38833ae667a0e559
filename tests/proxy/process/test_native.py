"""The native build of the proxy's hot path (:mod:`limpet.proxy.process.native`): the
mypyc modules and the C extension.

Where the build is expected (``make test`` sets ``LIMPET_NATIVE=required``; a build's
manifest says so too) every listed module must be imported from its C extension, so the
fast path cannot silently drop out of the tested set-up; without a build every one must
come from its source. The mode is reported by ``limpet proxy --build``, in the start-up
log and in ``/metrics``, and a source changed after the build is reported stale.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
from pathlib import Path

import pytest

from limpet.proxy.process import native

from ..conftest import Proxies
from .test_cli import limpet

EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def expected_mode() -> str:
    built = os.environ.get("LIMPET_NATIVE") == "required" or native.MANIFEST.is_file()
    return "compiled" if built else "interpreted"


def test_every_listed_module_is_loaded_as_built() -> None:
    compiled = expected_mode() == "compiled"
    for name in native.COMPILED:
        path = importlib.import_module(name).__file__
        assert path is not None, name
        assert path.endswith(EXTENSIONS) == compiled, (name, path)
        assert Path(path).with_name(name.rpartition(".")[2] + ".py").is_file(), path
    for name in native.C_EXTENSIONS:  # no .py: built, or not importable at all
        if compiled:
            path = importlib.import_module(name).__file__
            assert path is not None, name
            assert path.endswith(EXTENSIONS), (name, path)
            assert Path(path).with_name(name.rpartition(".")[2] + ".c").is_file(), path
        else:
            with pytest.raises(ImportError):
                importlib.import_module(name)
    mode = native.build_mode()
    assert mode.mode == expected_mode(), mode.describe()
    assert mode.stale == ()


@pytest.mark.parametrize(
    "changed", [native.COMPILED[0], native.C_EXTENSIONS[0]], ids=["mypyc", "c"]
)
def test_a_changed_source_is_reported_stale(
    changed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = expected_mode()
    real = json.loads(native.MANIFEST.read_text()) if native.MANIFEST.is_file() else {}
    modules = dict(real.get("modules", {}))
    modules[changed] = "0" * 64  # as if fields.py or native_mac.c had been edited since
    fake = tmp_path / "native_build.json"
    fake.write_text(json.dumps({"modules": modules}))
    monkeypatch.setattr(native, "MANIFEST", fake)
    mode = native.build_mode()
    if expected == "compiled":
        assert mode.mode == "stale"
        assert mode.stale == (changed,)
        assert changed in mode.describe()
    else:  # nothing compiled: no extension to be stale
        assert mode.mode == "interpreted"


def test_cli_reports_the_mode() -> None:
    result = limpet("--build")
    assert result.returncode == 0, result.stderr
    word = "compiled with mypyc" if expected_mode() == "compiled" else "interpreted"
    assert result.stdout.startswith(f"limpet proxy hot path: {word}"), result.stdout


def test_start_log_and_metric_report_the_mode(proxy: Proxies) -> None:
    p = proxy.start("--state-dir", str(proxy.tmp / "s"))
    word = "compiled with mypyc" if expected_mode() == "compiled" else "interpreted"
    assert f"proxy hot path: {word}" in p.log_text()
    metrics = p.metrics()
    assert metrics[f'limpet_proxy_build_info{{mode="{expected_mode()}"}}'] == 1
