"""No import cycle between the top-level modules of rollout-core (core/src) and the
filter (src/), read from the source text (control/ has its own, stricter check in
control/tests/layers.rs). Comments and test modules are left out; a `use crate::{a, b}`
group counts each name."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_graph(src: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.rs")):
        top = path.relative_to(src).parts[0].removesuffix(".rs")
        if top in ("lib", "main", "tests"):
            continue
        text = path.read_text().split("#[cfg(test)]")[0]
        text = re.sub(r"//[^\n]*", "", text)
        deps = set(re.findall(r"crate::(\w+)", text))
        for group in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
            depth, cur, parts = 0, "", []
            for ch in group:
                depth += ch == "{"
                depth -= ch == "}"
                if ch == "," and depth == 0:
                    parts.append(cur)
                    cur = ""
                else:
                    cur += ch
            parts.append(cur)
            deps |= {m.group(1) for p in parts if (m := re.match(r"\s*(\w+)", p))}
        graph.setdefault(top, set()).update(d for d in deps if d != top)
    return graph


def cycle_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return sorted((a, b) for a in graph for b in graph[a] if b in graph and a in reach(b))


def test_core_and_filter_modules_import_without_cycles():
    for src in (ROOT / "core" / "src", ROOT / "src"):
        graph = import_graph(src)
        assert len(graph) > 5, f"no modules read under {src}"
        assert cycle_edges(graph) == [], f"import cycle in {src}"


def test_the_check_sees_a_cycle(tmp_path):
    (tmp_path / "a.rs").write_text("use crate::b::X;\n")
    (tmp_path / "b.rs").write_text("use crate::{c, a::Y};\n")
    (tmp_path / "c.rs").write_text("// use crate::a::Z;\n")
    assert cycle_edges(import_graph(tmp_path)) == [("a", "b"), ("b", "a")]
