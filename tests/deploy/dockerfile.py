"""A small Dockerfile and .dockerignore reader for static checks (no Docker engine here).

It follows the Dockerfile reference closely enough for our own files: parser
directives, comments, backslash line continuations, ``ARG`` defaults before the first
``FROM`` substituted into ``FROM`` lines, exec (JSON) and shell forms, and
.dockerignore patterns with ``**``, ``*``, ``?`` and ``!`` exceptions (last match wins).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        if not self.value.startswith("["):
            return None
        parsed = json.loads(self.value)
        assert isinstance(parsed, list)
        return [str(p) for p in parsed]


@dataclass(frozen=True, slots=True)
class Stage:
    image: str  # after ARG substitution
    name: str | None
    instructions: tuple[Instruction, ...]


def parse(text: str) -> tuple[dict[str, str], list[Instruction]]:
    """Parser directives and the instructions, continuation lines joined."""
    directives: dict[str, str] = {}
    instructions: list[Instruction] = []
    lines = text.splitlines()
    in_header = True
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        stripped = raw.strip()
        if in_header:
            m = re.fullmatch(r"#\s*([a-zA-Z]+)\s*=\s*(\S+)", stripped)
            if m:
                directives[m.group(1).lower()] = m.group(2)
                continue
            in_header = False
        if not stripped or stripped.startswith("#"):
            continue
        parts = [stripped]
        while parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1].rstrip()
            # Comment lines inside a continued instruction are dropped, like Docker does.
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1
            if i == len(lines):
                raise ValueError(f"line {start}: continuation at end of file")
            parts.append(lines[i].strip())
            i += 1
        keyword, _, value = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
    return directives, instructions


def stages(instructions: list[Instruction]) -> list[Stage]:
    args: dict[str, str] = {}
    out: list[Stage] = []
    current: list[Instruction] | None = None
    image = ""
    name: str | None = None
    for ins in instructions:
        if ins.keyword == "ARG" and current is None:
            key, _, default = ins.value.partition("=")
            args[key.strip()] = default.strip()
        elif ins.keyword == "FROM":
            if current is not None:
                out.append(Stage(image, name, tuple(current)))
            words = ins.value.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        elif current is None:
            raise ValueError(f"line {ins.line}: {ins.keyword} before the first FROM")
        else:
            current.append(ins)
    if current is not None:
        out.append(Stage(image, name, tuple(current)))
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def ignored(path: str, dockerignore: str) -> bool:
    """Whether the build context leaves out ``path`` (relative, with / separators)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:].strip() if negate else line
        rules.append((negate, _pattern_regex(pat.strip("/"))))
    # A path is in the context unless excluded; a rule matching a parent matches it too.
    prefixes = [path]
    parts = path.split("/")
    prefixes += ["/".join(parts[:n]) for n in range(1, len(parts))]
    result = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def load(root: Path) -> tuple[dict[str, str], list[Stage], str]:
    directives, instructions = parse((root / "Dockerfile").read_text())
    return directives, stages(instructions), (root / ".dockerignore").read_text()
