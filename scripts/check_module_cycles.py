#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a cycle (part of `make lint`).

Each source file of a crate is a module; a module depends on another when it names it through
`crate::…` or `super::…` (in a `use` or inline). A module's use of its own ancestors (the items
that `lib.rs` or a `mod.rs` define for the modules below them) is not counted: a parent owns its
children. Any other cycle, such as rules -> actions -> evaluator -> rules, is printed with the
files and lines that make it, and the script exits 1.

    scripts/check_module_cycles.py [CRATE_SRC ...]   (default: every services/*/src, shared/src)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PATH_RE = re.compile(r"\b(crate|super)((?:::(?:[A-Za-z_][A-Za-z0-9_]*|\{))+)")


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    """The module path of a source file: lib.rs is (), a/mod.rs and a.rs are ("a",)."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts.pop()
    return tuple(parts)


def strip_comments(text: str) -> str:
    """The source without comments, string and char literals (which may mention `crate::`).

    One pass that knows where each of them starts, so a quote inside a comment, or a `//`
    inside a string, is read as what it is. Newlines are kept for the line numbers.
    """
    out = []
    i, n = 0, len(text)
    raw_string = re.compile(r'b?r(#*)"')
    char_literal = re.compile(r"b?'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^'\\\n])'")
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif (m := raw_string.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + m.group(1)
            end = text.find(close, m.end())
            end = n if end < 0 else end + len(close)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c in "'b" and (m := char_literal.match(text, i)):
            out.append("' '")
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def brace_paths(text: str, start: int) -> tuple[list[list[str]], int]:
    """The paths inside a `{…}` use group starting at text[start] == '{' (nested groups expand)."""
    paths: list[list[str]] = []
    current: list[str] = []
    i = start + 1
    token = ""
    while i < len(text):
        c = text[i]
        if c.isalnum() or c == "_":
            token += c
        else:
            if token:
                current.append(token)
                token = ""
            if c == "{":
                inner, i = brace_paths(text, i)
                paths.extend(current + p for p in inner)
                current = []
            elif c == ",":
                if current:
                    paths.append(current)
                current = []
            elif c == "}":
                if current:
                    paths.append(current)
                return paths, i
            elif c == " " or c == "\n" or c == ":":
                pass
            elif text.startswith("as", i):
                pass
        i += 1
    return paths, i


def referenced(text: str, here: tuple[str, ...]) -> list[tuple[tuple[str, ...], int]]:
    """Absolute module paths (with their line numbers) that `text` names through crate/super."""
    found = []
    for match in PATH_RE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        base = [] if match.group(1) == "crate" else list(here[:-1])
        tail = match.group(2)
        segments = [s for s in tail.split("::") if s]
        if segments and segments[-1] == "{":
            prefix = segments[:-1]
            group_start = match.end() - 1
            inner, _ = brace_paths(text, group_start)
            for path in inner:
                if path and path[0] == "self":
                    path = path[1:]
                found.append((tuple(base + prefix + path), line))
        else:
            # `super::super::x`
            while segments and segments[0] == "super":
                base = base[:-1]
                segments = segments[1:]
            found.append((tuple(base + segments), line))
    return found


def crate_graph(src: Path):
    files = {module_of(src, f): f for f in sorted(src.rglob("*.rs"))}
    edges: dict[tuple[str, ...], dict[tuple[str, ...], tuple[Path, int]]] = {m: {} for m in files}
    for module, file in files.items():
        for path, line in referenced(strip_comments(file.read_text()), module):
            # The longest prefix of the path that is a module of this crate.
            target = None
            for n in range(len(path), 0, -1):
                if path[:n] in files:
                    target = path[:n]
                    break
            if target is None or target == module:
                continue
            if module[: len(target)] == target:
                continue  # an ancestor: the parent owns its children
            edges[module].setdefault(target, (file, line))
    return edges


def cycles(edges) -> list[list[tuple[str, ...]]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    found = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return found


def name(module: tuple[str, ...]) -> str:
    return "::".join(module) or "crate"


def main(argv: list[str]) -> int:
    sources = [Path(a) for a in argv] or sorted(ROOT.glob("services/*/src")) + [ROOT / "shared/src"]
    failed = False
    for src in sources:
        edges = crate_graph(src)
        for component in cycles(edges):
            failed = True
            members = set(component)
            print(f"{src}: modules import each other in a cycle: {', '.join(map(name, component))}")
            for module in component:
                for target, (file, line) in sorted(edges[module].items()):
                    if target in members:
                        rel = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file
                        print(f"    {name(module)} -> {name(target)}  ({rel}:{line})")
    if not failed:
        print(f"no module cycles in {len(sources)} crate(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
