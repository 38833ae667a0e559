"""The fake proxy pod's command line is one ``limpet proxy`` accepts, as the pod needs it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from limpet.devcluster.fakepods import BackendSpec
from limpet.devcluster.proxypod import ADMIN_PORT, ProxyPodCommand, state_dir
from limpet.proxy.process import command as proxy_command


def test_proxy_pod_command_parses_as_limpet_proxy(tmp_path: Path) -> None:
    build = ProxyPodCommand(token_file=tmp_path / "token", state_root=tmp_path / "proxies")
    spec = BackendSpec(pod="edge-1", host="10.200.3.7", port=8080, address="10.200.3.7")
    argv = build(spec)
    assert argv[:4] == [sys.executable, "-m", "limpet.cli", "proxy"]
    parser = argparse.ArgumentParser()
    proxy_command.add_arguments(parser)
    args = parser.parse_args(argv[4:])
    assert args.listen == "10.200.3.7:8080"
    assert args.admin_listen == f"10.200.3.7:{ADMIN_PORT}"
    assert args.token_file == str(tmp_path / "token")
    assert args.log_level == "warning"
    # Each pod keeps its plan in a folder of its own, made before the proxy starts.
    assert args.state_dir == str(state_dir(tmp_path / "proxies", "edge-1"))
    assert Path(args.state_dir).is_dir()
    other = build(BackendSpec(pod="edge-2", host="10.200.3.8", port=8080, address="10.200.3.8"))
    assert str(state_dir(tmp_path / "proxies", "edge-2")) in other
    assert args.state_dir not in other
