"""The explored state space as a ``networkx.DiGraph``, and its pictures (design §5.3).

Nodes are states with a short label (per endpoint: connected, device realized, MSI-X enable,
fate; the channel lengths), coloured by the worst fate in them: aborted red, crashed dark red,
failed orange, hung purple.  Edges carry the action.  DOT is written here as plain text (no
pydot or pygraphviz needed); SVG and PNG come from Graphviz's ``dot`` binary when it is on the
``PATH``.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import networkx as nx

from model.actions import Action, Config
from model.state import SystemState
from model.system import initial_state, step, successors
from model.variants import Variant
from properties.explore import ExploreOptions, explore
from properties.invariants import violations

FATE_COLORS = {"aborted": "red", "crashed": "darkred", "failed": "orange", "hung": "purple"}
_FATE_RANK = ("failed", "hung", "aborted", "crashed")


class GraphvizMissingError(RuntimeError):
    """Graphviz's ``dot`` is not installed: only the DOT format is available."""


def state_label(state: SystemState) -> str:
    """A few fields that matter, one line per endpoint."""
    lines = []
    for e, ep in enumerate(state.endpoints):
        parts = [f"e{e}", "conn" if ep.connected else "-"]
        device = ep.device
        if device is not None:
            parts.append(f"dev id={device.vm_id}")
            if device.msix.present:
                parts.append("msix=" + ("on" if device.msix.enable else "off"))
        elif ep.client is not None:
            parts.append(f"client id={ep.client.id}")
        if ep.fate is not None:
            parts.append(ep.fate.kind + (f"@{ep.fate.line}" if ep.fate.line else ""))
        lines.append(" ".join(parts))
    lines.append("ch=" + ",".join(str(len(c)) for c in state.channels))
    return "\n".join(lines)


def state_color(state: SystemState) -> str:
    kinds = [ep.fate.kind for ep in state.endpoints if ep.fate is not None]
    if not kinds:
        return "black"
    return FATE_COLORS.get(max(kinds, key=lambda k: _FATE_RANK.index(k) if k in _FATE_RANK
                               else -1), "gray")


def action_label(action: Action) -> str:
    fields = action.to_json()
    name = fields.pop("action")
    fields.pop("props", None)
    return " ".join([name, *(str(v) for v in fields.values())])


def _decorate(graph: Any) -> Any:
    for _, data in graph.nodes(data=True):
        state = data["state"]
        data["label"] = state_label(state)
        data["color"] = state_color(state)
        data["violations"] = [name for name, _ in violations(state)]
    for _, _, data in graph.edges(data=True):
        data["label"] = action_label(data["action"])
    return graph


def state_graph(config: Config, variant: Variant, depth: int, max_states: int = 2000,
                symmetry: bool = False) -> Any:
    """The configuration's state graph, breadth-first to ``depth`` (at most ``max_states``)."""
    result = explore(config, variant, ExploreOptions(
        max_depth=depth, max_states=max_states, time_limit=600.0, graph=True,
        symmetry=symmetry))
    return _decorate(result.graph)


def counterexample_graph(config: Config, variant: Variant, steps: tuple[Action, ...]) -> Any:
    """The path of a trace, with every sibling transition out of each state on it.

    Path nodes are ``p0``, ``p1``, ... (``on_path`` set); siblings ``p<i>s<j>``."""
    graph = nx.DiGraph()
    state = initial_state(config, variant)
    graph.add_node("p0", state=state, on_path=True)
    for i, action in enumerate(steps):
        outcome = step(state, action)
        if outcome is None:
            break
        for j, (other, nxt, _) in enumerate(successors(state)):
            if other != action:
                graph.add_node(f"p{i}s{j}", state=nxt, on_path=False)
                graph.add_edge(f"p{i}", f"p{i}s{j}", action=other, on_path=False)
        state = outcome[0]
        graph.add_node(f"p{i + 1}", state=state, on_path=True)
        graph.add_edge(f"p{i}", f"p{i + 1}", action=action, on_path=True)
    return _decorate(graph)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: Any, name: str = "ivshmem") -> str:
    """DOT text; violating states are drawn double, path edges (if marked) bold."""
    out = [f"digraph {_quote(name)} {{", '  node [shape=box, fontname="monospace"];',
           '  edge [fontname="monospace", fontsize=9];']
    for node, data in graph.nodes(data=True):
        attrs = [f"label={_quote(data.get('label', str(node)))}",
                 f"color={_quote(data.get('color', 'black'))}"]
        if data.get("violations"):
            attrs.append("peripheries=2")
            attrs.append(f"tooltip={_quote(', '.join(data['violations']))}")
        if data.get("on_path"):
            attrs.append("style=bold")
        out.append(f"  {_quote(str(node))} [{', '.join(attrs)}];")
    for a, b, data in graph.edges(data=True):
        attrs = [f"label={_quote(data.get('label', ''))}"]
        if data.get("on_path"):
            attrs.append("style=bold")
        out.append(f"  {_quote(str(a))} -> {_quote(str(b))} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def render(dot_text: str, fmt: str) -> bytes:
    """SVG or PNG through Graphviz's ``dot``; DOT is returned as it is."""
    if fmt == "dot":
        return dot_text.encode()
    binary = shutil.which("dot")
    if binary is None:
        raise GraphvizMissingError(
            f"format {fmt} needs Graphviz's 'dot' program (Debian package graphviz); "
            "use --format dot, or install graphviz")
    done = subprocess.run([binary, f"-T{fmt}"], input=dot_text.encode(), capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
