"""Static checks of the container image definition (this machine has no Docker engine).

The Dockerfile must parse, pin its bases by digest, install only hash-pinned binary
wheels from locks that match the dev venv, run as a numeric non-root user, never ADD
a URL, and copy only what the .dockerignore lets into the build context.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.deploy.dockerfile import Instruction, Stage

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "deploy" / "image"
DIGEST = re.compile(r"^[\w./:-]+@sha256:[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage], str]:
    return dockerfile.load(ROOT)


def _lock_module() -> object:
    sys.path.insert(0, str(IMAGE_DIR))
    try:
        import lock  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(IMAGE_DIR))
    return lock


def test_parses_into_a_multi_stage_build(parsed: tuple[dict[str, str], list[Stage], str]) -> None:
    directives, stages, _ = parsed
    assert directives.get("syntax", "").startswith("docker/dockerfile:")
    assert len(stages) >= 2
    names = [s.name for s in stages]
    final = stages[-1]
    copies_from = [
        i.value for i in final.instructions if i.keyword == "COPY" and "--from=" in i.value
    ]
    assert copies_from, "the final stage takes its files from a build stage"
    for value in copies_from:
        src = re.search(r"--from=(\S+)", value)
        assert src is not None
        assert src.group(1) in names


def test_every_base_image_is_pinned_by_digest(
    parsed: tuple[dict[str, str], list[Stage], str],
) -> None:
    _, stages, _ = parsed
    earlier: set[str] = set()
    for stage in stages:
        assert stage.image in earlier or DIGEST.match(stage.image), stage.image
        assert "slim" in stage.image or stage.image in earlier, "slim bases only"
        if stage.name:
            earlier.add(stage.name)


def test_runs_as_numeric_non_root_user(parsed: tuple[dict[str, str], list[Stage], str]) -> None:
    _, stages, _ = parsed
    final = stages[-1]
    users = [i for i in final.instructions if i.keyword == "USER"]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit(), "numeric, so runAsNonRoot can verify it"
    assert int(uid) != 0
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    after_user = final.instructions[final.instructions.index(users[-1]) :]
    assert not [i for i in after_user if i.keyword == "RUN"], "nothing runs as root after USER"


def test_entrypoint_is_the_limpet_cli_in_exec_form(
    parsed: tuple[dict[str, str], list[Stage], str],
) -> None:
    _, stages, _ = parsed
    entry = [i for i in stages[-1].instructions if i.keyword == "ENTRYPOINT"]
    assert entry
    assert entry[-1].exec_form() == ["limpet"]
    env = " ".join(i.value for i in stages[-1].instructions if i.keyword == "ENV")
    # Read-only root filesystem: never try to write bytecode at run time.
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_no_add_of_remote_sources_and_no_curl_pipes(
    parsed: tuple[dict[str, str], list[Stage], str],
) -> None:
    _, stages, _ = parsed
    for ins in (i for s in stages for i in s.instructions):
        if ins.keyword == "ADD":
            assert not re.search(r"(https?|git|ftp)://|git@", ins.value), ins
        if ins.keyword == "RUN":
            assert not re.search(r"\b(curl|wget)\b", ins.value), ins


def _pip_installs(stages: list[Stage]) -> list[tuple[Instruction, list[str]]]:
    found = []
    for ins in (i for s in stages for i in s.instructions if i.keyword == "RUN"):
        for command in re.split(r"&&|;|\|\|", ins.value):
            words = shlex.split(command)
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                found.append((ins, words))
    return found


def test_every_pip_install_is_hash_pinned_or_offline(
    parsed: tuple[dict[str, str], list[Stage], str],
) -> None:
    _, stages, _ = parsed
    installs = _pip_installs(stages)
    assert len(installs) >= 2
    for ins, words in installs:
        if "--no-index" in words:
            continue  # only the wheel built from this repository
        assert "--require-hashes" in words, f"line {ins.line}: {words}"
        assert "--only-binary=:all:" in words, f"line {ins.line}: no source builds"
        lock = words[words.index("-r") + 1]
        assert lock.endswith(".lock")


def test_copied_sources_exist_and_are_in_the_build_context(
    parsed: tuple[dict[str, str], list[Stage], str],
) -> None:
    _, stages, ignore = parsed
    for ins in (i for s in stages for i in s.instructions if i.keyword == "COPY"):
        if "--from=" in ins.value:
            continue
        words = ins.exec_form() or ins.value.split()
        sources = [w for w in words[:-1] if not w.startswith("--")]
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"line {ins.line}: {src} is missing"
            files = list(path.rglob("*.py")) if path.is_dir() else [path]
            assert files
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if "__pycache__" in rel:
                    continue
                assert not dockerfile.ignored(rel, ignore), f".dockerignore drops {rel}"


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text()
    for rel in (".venv/bin/python", ".cache/bin/kube-apiserver", ".git/HEAD", "tests/x.py"):
        assert dockerfile.ignored(rel, ignore), rel
    assert dockerfile.ignored("operator/limpet/__pycache__/cli.cpython-311.pyc", ignore)
    assert not dockerfile.ignored("operator/limpet/cli.py", ignore)


def test_runtime_lock_matches_the_venv_and_pyproject() -> None:
    lock = _lock_module()
    closure = lock.runtime_closure()  # type: ignore[attr-defined]
    locked = lock.locked_pins(IMAGE_DIR / "requirements.lock")  # type: ignore[attr-defined]
    assert locked == closure, (
        "deploy/image/requirements.lock drifted from the venv; "
        "run: .venv/bin/python deploy/image/lock.py"
    )


@pytest.mark.parametrize("name", ["requirements.lock", "build-requirements.lock"])
def test_every_locked_requirement_carries_hashes(name: str) -> None:
    text = (IMAGE_DIR / name).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[1])
    reqs = [b for b in blocks if re.match(r"[A-Za-z0-9][\w.-]*==", b)]
    assert reqs
    for block in reqs:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), block.splitlines()[0]


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    rules = "*\n!keep/\nkeep/**/*.tmp\n!keep/a.tmp\n"
    assert dockerfile.ignored("x", rules)
    assert not dockerfile.ignored("keep/sub/file.py", rules)
    assert dockerfile.ignored("keep/sub/file.tmp", rules)
    assert not dockerfile.ignored("keep/a.tmp", rules)
