"""Render a provenance graph as a tree: a ``rich.tree.Tree`` for the CLI, plain lines for the TUI.

The root is the target feature; each node's children are the upstream nodes feeding it, largest
|attribution| first, its layer's SAE error last. A feature kept under several parents is drawn in
full under the first one and as a one-line reference ("↑ see above") elsewhere, so the text stays
a tree even though the graph is a DAG.
"""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

TREE_WIDTH = 400
"""Console width for plain-text export: wide enough that no line wraps."""


def _describe(node, graph) -> str:
    if node.kind == "error":
        act = f" ‖err‖ {node.activation:.3g}" if node.activation is not None else ""
        return f"{node.id} ({node.label}){act}"
    if node.kind == "embedding":  # the id already names the position
        norm = f" ‖e‖ {node.activation:.3g}" if node.activation is not None else ""
        return f"{node.id} {node.token!r}{norm}"
    parts = [node.id]
    if node.position is not None:
        parts.append(f"@{node.position} {node.token!r}")
    if node.activation is not None:
        parts.append(f"act {node.activation:.3g}")
    if node.label and node.label != node.token:
        parts.append(f"[{node.label}]")
    return " ".join(parts)


def _root_text(graph) -> Text:
    root = graph.node(graph.root)
    head = _describe(root, graph)
    extra = f"  ({graph.method}" + (f", baseline {root.baseline:.3g})" if root.baseline is not None else ")")
    return Text(head + extra, style="bold")


def _edge_text(edge, node, graph, seen: bool) -> Text:
    style = "green" if edge.weight > 0 else "red" if edge.weight < 0 else ""
    t = Text(f"{edge.weight:+.3g}", style=style)
    t.append("  ")
    t.append(_describe(node, graph), style="dim" if node.kind == "error" else "")
    if seen:
        t.append("  ↑ see above", style="dim")
    return t


def render_tree(graph) -> Tree:
    """A ``rich.tree.Tree`` of ``graph`` (no markup is interpreted in tokens or labels)."""
    tree = Tree(_root_text(graph))
    expanded = {graph.root}

    def grow(branch: Tree, node_id: str) -> None:
        for edge, child in graph.children(node_id):
            seen = child.kind == "feature" and child.id in expanded
            sub = branch.add(_edge_text(edge, child, graph, seen))
            if child.kind == "feature" and not seen:
                expanded.add(child.id)
                grow(sub, child.id)

    grow(tree, graph.root)
    for note in graph.notes:
        tree.add(Text(f"note: {note}", style="yellow"))
    return tree


def tree_lines(graph) -> list[str]:
    """The tree as plain text lines (Unicode guides, no colour codes)."""
    buf = io.StringIO()
    console = Console(file=buf, width=TREE_WIDTH, color_system=None, force_terminal=False,
                      legacy_windows=False, soft_wrap=False)
    console.print(render_tree(graph))
    return [line.rstrip() for line in buf.getvalue().splitlines()]


def render_ascii(graph) -> str:
    """``tree_lines`` joined with newlines (what the TUI's provenance pane shows)."""
    return "\n".join(tree_lines(graph))
