#!/usr/bin/env python3
"""Checks the structure of src/: no import circle between files, no function over 80 lines.

  structure.py [SRC]      prints every circle and every long function; exits 1 if there are any
  structure.py --self-test   checks that the circles below are found and their fixes pass

Test code (`#[cfg(test)]` modules and files) is left out. A file's imports are the paths it
names through `use` and inline (`crate::…`, `super::…`, `self::…`, or a child module of its
own), each resolved to the deepest module file it reaches, through re-exports to the file
that defines the item; a module's facade (`mod` and `pub use` of what lies below it) is not
an import of its own.
"""

import re
import sys
from pathlib import Path

MAX_FN_LINES = 80

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def blank_strings_and_comments(text):
    """The text with comments and string/char literals replaced by spaces (lines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not re.match(r"\w", text[i - 1] if i else " "):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + len(hashes) + 2)
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x..'", text[i:i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x..'", text[i:i + 12])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(text, open_at):
    """Index just past the brace that closes the one at open_at."""
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def strip_tests(text):
    """The code with `#[cfg(test)]` items blanked (lines kept), and the test-only child modules."""
    test_mods = set()
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*([;{])", text)
        if not m:
            break
        end = m.end() if m.group(4) == ";" else block_end(text, m.end() - 1)
        if m.group(4) == ";":
            test_mods.add(m.group(3))
        text = text[:m.start()] + re.sub(r"[^\n]", " ", text[m.start():end]) + text[end:]
    return text, test_mods


def module_of(src, path):
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod" or (len(parts) == 1 and parts[0] in ("lib", "main")):
        parts = parts[:-1]
    return tuple(parts)


def use_paths(tree, prefix=()):
    """The (path, name) pairs a `use` tree names: `a::{b, c::{d as e}}` gives (a::b, b) and
    (a::c::d, e)."""
    tree = tree.strip()
    if not tree:
        return []
    depth, parts, cur = 0, [], ""
    if tree.startswith("{") and tree.endswith("}"):
        for ch in tree[1:-1]:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        return [p for part in parts for p in use_paths(part, prefix)]
    if tree == "*":
        return [(prefix, None)]
    m = re.match(r"(" + IDENT + r")\s*(::\s*(.*)|\s+as\s+(" + IDENT + r"))?$", tree, re.S)
    if not m:
        return []
    head, rest, rename = m.group(1), m.group(3), m.group(4)
    if rest is not None:
        return use_paths(rest, prefix + (head,))
    if head == "self":
        return [(prefix, rename or (prefix[-1] if prefix else None))]
    return [(prefix + (head,), rename or head)]


def absolute(module, path, children, imported=None):
    """The absolute module path a path names from `module`, or None if outside the crate;
    `imported` maps the names the file's own `use` brought in to their absolute paths."""
    if not path:
        return None
    head, rest = path[0], list(path[1:])
    if imported and head in imported and len(path) > 1:
        return imported[head] + tuple(rest)
    if head == "crate":
        return tuple(rest)
    if head in ("self", "super"):
        base = list(module)
        while True:
            if head == "super":
                if not base:
                    return None
                base.pop()
            if not rest or rest[0] not in ("self", "super"):
                break
            head = rest.pop(0)
        return tuple(base + rest)
    if head in children:
        return tuple(module) + (head,) + tuple(rest)
    return None


def resolve(modules, aliases, globs, defined, path, hops=0):
    """The deepest module file a path reaches, through re-exports (`pub use`, named or glob)
    to where the item is defined."""
    for k in range(len(path), -1, -1):
        if path[:k] in aliases and hops < 16:
            return resolve(modules, aliases, globs, defined, aliases[path[:k]] + path[k:], hops + 1)
        if path[:k] in modules:
            module, rest = path[:k], path[k:]
            if rest and rest[0] not in defined.get(module, ()) and hops < 16:
                # Not defined here: one of the module's glob re-exports brings it.
                for glob in globs.get(module, ()):
                    target = glob + rest
                    file = resolve(modules, aliases, globs, defined, target, hops + 1)
                    if file is not None and file != modules[module] and (
                            rest[0] in defined.get(glob, ()) or target[:len(glob) + 1] in aliases):
                        return file
            return modules[path[:k]]
    return None


ITEM = re.compile(r"\b(?:fn|struct|enum|trait|type|const|static|mod|union|macro_rules!)\s+(" + IDENT + r")")


def scan(src, files, code):
    """Per file: the paths it imports; for the crate: named re-exports (aliases), glob
    re-exports (globs) and the names each module defines."""
    uses, aliases, globs, defined = {}, {}, {}, {}
    for path in files:
        text, module = code[path], module_of(src, path)
        defined[module] = set(ITEM.findall(text))
        children = set(re.findall(r"\bmod\s+(" + IDENT + r")\s*;", text))
        found_paths, imported = [], {}
        for m in re.finditer(r"\b(pub(\([^)]*\))?\s+)?use\s+([^;]+);", text):
            for p, name in use_paths(m.group(3)):
                target = absolute(module, p, children)
                if target is None:
                    continue
                reexport = m.group(1) is not None
                if name is not None:
                    imported[name] = target
                    if reexport:
                        aliases[tuple(module) + (name,)] = target
                elif reexport:
                    globs.setdefault(tuple(module), []).append(target)
                # A module's facade (re-exporting what lies below it) is not an import.
                if not (reexport and target[:len(module)] == module):
                    found_paths.append(target)
        body = re.sub(r"\buse\s+[^;]+;", "", text)
        for m in re.finditer(r"(?<![\w:])(" + IDENT + r"(?:\s*::\s*" + IDENT + r")+)", body):
            path_named = tuple(re.split(r"\s*::\s*", m.group(1)))
            target = absolute(module, path_named, children, imported)
            if target is not None:
                found_paths.append(target)
        uses[path] = found_paths
    return uses, aliases, globs, defined


def functions(code, path):
    """(name, first line, lines) of every function with a body."""
    out = []
    for m in re.finditer(r"\bfn\s+(" + IDENT + r")", code):
        j, depth = m.end(), 0
        while j < len(code):
            ch = code[j]
            if ch in "([<":
                depth += 1
            elif ch in ")]>" and not (ch == ">" and code[j - 1] == "-"):
                depth -= 1
            elif ch == ";" and depth <= 0:
                break
            elif ch == "{" and depth <= 0:
                end = block_end(code, j)
                first = code.count("\n", 0, m.start()) + 1
                last = code.count("\n", 0, end - 1) + 1
                out.append((m.group(1), first, last - first + 1))
                break
            j += 1
    return out


def circles(graph):
    """The strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# Small crates, each with one circle between a.rs and b/ written one way a path can be
# named: (files, the line of a.rs that closes the circle). Without that line, none is left.
SELF_TESTS = {
    "use": ({"lib.rs": "mod a; mod b;", "b/mod.rs": "mod c; pub use c::C;",
             "b/c.rs": "use crate::a::A; pub struct C;", "a.rs": "pub struct A;"},
            "use crate::b::C;"),
    "through a module's name": ({"lib.rs": "mod a; mod b;", "b/mod.rs": "mod c; pub use c::C;",
                                 "b/c.rs": "use crate::a::A; pub struct C;", "a.rs": "use crate::b;"},
                                "fn f() { b::C::new(); }"),
    "through a glob re-export": ({"lib.rs": "mod a; mod b;", "b/mod.rs": "mod c; pub use c::*;",
                                  "b/c.rs": "use crate::a::A; pub struct C;", "a.rs": "pub struct A;"},
                                 "use crate::b::C;"),
    # b's facade is no import of b's: a using b's own D closes no circle.
    "through pub(in …) use": ({"lib.rs": "mod a; mod b;",
                               "b/mod.rs": "mod c; pub(in crate) use c::C; pub struct D;",
                               "b/c.rs": "use crate::a::A; pub struct C;",
                               "a.rs": "use crate::b::D; pub struct A;"},
                              "use crate::b::C;"),
}


def self_test():
    import tempfile
    failed = 0
    for name, (tree, closing) in SELF_TESTS.items():
        for with_closing in (True, False):
            with tempfile.TemporaryDirectory() as root:
                for rel, text in tree.items():
                    path = Path(root) / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    extra = "\n" + closing if rel == "a.rs" and with_closing else ""
                    path.write_text(text + extra + "\n")
                files = sorted(Path(root).rglob("*.rs"))
                code = {f: strip_tests(blank_strings_and_comments(f.read_text()))[0] for f in files}
                graph = dependencies(Path(root), files, code)
                if bool(circles(graph)) != with_closing:
                    failed += 1
                    print(f"self-test {name!r}: circle {'missed' if with_closing else 'invented'}")
    print(f"structure self-test: {len(SELF_TESTS) * 2 - failed} of {len(SELF_TESTS) * 2} cases right")
    return 1 if failed else 0


def dependencies(src, files, code):
    """The import graph between files."""
    modules = {module_of(src, p): p for p in files}
    uses, aliases, globs, defined = scan(src, files, code)
    graph = {p: set() for p in files}
    for path in files:
        for target in uses[path]:
            file = resolve(modules, aliases, globs, defined, target)
            if file is not None and file != path:
                graph[path].add(file)
    return graph


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    files = sorted(src.rglob("*.rs"))
    code, test_only = {}, set()
    for path in files:
        text, test_mods = strip_tests(blank_strings_and_comments(path.read_text()))
        # A visibility (`pub(in crate::a)`) names a module but imports nothing: its path is
        # blanked, the `pub(…)` kept (a `pub(in …) use` is still a re-export).
        text = re.sub(r"pub\(\s*in\s+[^)]*\)", lambda m: "pub(" + " " * (len(m.group(0)) - 5) + ")", text)
        code[path] = text
        for name in test_mods:
            base = path.parent if path.name in ("mod.rs", "lib.rs", "main.rs") else path.with_suffix("")
            test_only.update({base / f"{name}.rs", base / name / "mod.rs"})
    files = [p for p in files if p not in test_only]
    graph, long = dependencies(src, files, code), []
    for path in files:
        long += [(path, n, first, size) for n, first, size in functions(code[path], path)
                 if size > MAX_FN_LINES]

    found = circles(graph)
    for comp in found:
        print("import circle: " + " -> ".join(str(p) for p in comp))
        for a in comp:
            for b in sorted(graph[a] & set(comp)):
                print(f"  {a} imports {b}")
    for path, name, first, size in sorted(long, key=lambda t: -t[3]):
        print(f"{path}:{first}: fn {name} has {size} lines (at most {MAX_FN_LINES})")
    print(f"structure: {len(files)} files, {len(found)} import circles, "
          f"{len(long)} functions over {MAX_FN_LINES} lines")
    return 1 if found or long else 0


if __name__ == "__main__":
    sys.exit(main())
