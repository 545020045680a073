"""The explored state space as a ``networkx.DiGraph``, and its pictures.

Nodes are states; edges carry the action.  A state's label is a headline (per endpoint:
connected, device and its ID, MSI-X, fate, the messages queued for it), then what this state
changed (``field: old -> new``, against the state it was reached from), and, where two
different states would still read the same, the fields that tell them apart.  Colour is the
worst fate in the state (aborted red, crashed dark red, failed orange, hung purple); a double
border marks a state that violates a property.  Every picture carries a legend.

A counterexample is drawn along its path, top to bottom, one row per step; the other actions
enabled at each step are listed in a box beside it (with the fate they would lead to), so a
path of ten steps stays under 2,000 pixels wide.  DOT is written here as plain text; SVG and PNG
come from Graphviz's ``dot`` binary when it is on the ``PATH``.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import fields, is_dataclass
from typing import Any

import networkx as nx

from ivshmem_model.model.actions import Action, Config
from ivshmem_model.model.state import SystemState
from ivshmem_model.model.system import initial_state, step, successors
from ivshmem_model.model.variants import Variant
from ivshmem_model.properties.explore import ExploreOptions, explore
from ivshmem_model.properties.invariants import violations

FATE_COLORS = {"aborted": "red", "crashed": "darkred", "failed": "orange", "hung": "purple"}
_FATE_RANK = ("failed", "hung", "aborted", "crashed")

# Lines of "what changed" shown in a label, and of other actions in a sibling box.
MAX_CHANGES = 7
MAX_SIBLINGS = 8


class GraphvizMissingError(RuntimeError):
    """Graphviz's ``dot`` is not installed: only the DOT format is available."""


# ---------------------------------------------------------------------------------------------
# Labels


def _flatten(value: Any, path: str, out: dict[str, str]) -> None:
    """Every leaf of a state tree as ``path -> text``; sparse ``(index, value)`` arrays and
    tuples of records are indexed, tuples of plain values kept whole."""
    if is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            if f.name.startswith("_") or not f.compare:
                continue
            _flatten(getattr(value, f.name), f"{path}.{f.name}" if path else f.name, out)
    elif isinstance(value, tuple) and value and all(
            isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int)
            and is_dataclass(v[1]) for v in value):
        for index, item in value:
            _flatten(item, f"{path}[{index}]", out)
    elif isinstance(value, tuple) and value and all(
            is_dataclass(v) or v is None or isinstance(v, tuple) for v in value):
        for index, item in enumerate(value):
            _flatten(item, f"{path}[{index}]", out)
    elif value is not None and value != "" and value != ():
        out[path] = str(value)  # absent, empty and None all read "-"


_SHORT = (("endpoints[", "e"), ("].device.", "].dev."),
          ("channels[", "ch"), ("server.", "srv."), ("objects[", "obj"), ("fds[", "fd"))


def _short(path: str) -> str:
    for long, short in _SHORT:
        path = path.replace(long, short)
    # e0]. -> e0.  ch1][2] -> ch1[2]
    for prefix in ("e", "ch", "obj", "fd"):
        for i in range(64):
            path = path.replace(f"{prefix}{i}]", f"{prefix}{i}")
    return path


def state_facts(state: SystemState) -> dict[str, str]:
    """The state as short ``field -> value`` pairs: ``e0.vm_id``, ``e0.msix.enable``,
    ``ch0[1]`` (a queued message), ``fd3.open``, ..."""
    out: dict[str, str] = {}
    _flatten(state, "", out)
    return {_short(k): v for k, v in out.items()}


def _queue(state: SystemState, e: int) -> str:
    from ivshmem_model.properties.trace import queued_messages

    items = [str(m["value"]) + (f" {m['fd']}" if m["fd"] else "")
             for m in queued_messages(state, e)]
    return "[" + ", ".join(items) + "]"


def headline(state: SystemState) -> list[str]:
    """One line per endpoint: connected, device or client and its ID, MSI-X, fate, queue."""
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
        if state.channels[e]:
            parts.append("queue=" + _queue(state, e))
        lines.append(" ".join(parts))
    return lines


def _order(key: str) -> tuple[Any, ...]:
    """Endpoints' own fields first, then the server's, then descriptors and objects."""
    rank = 2 if key.startswith(("fd", "obj")) else 1 if key.startswith("srv") else 0
    return (rank, *_natural(key))


def _under(key: str, record: str) -> bool:
    return key.startswith(record + ".")


def _whole_record(key: str, old: dict[str, str], new: dict[str, str]) -> str | None:
    """The outermost record holding ``key`` that exists on one side only, if any."""
    parts = key.split(".")
    for n in range(1, len(parts)):
        record = ".".join(parts[:n])
        if any(_under(k, record) for k in old) != any(_under(k, record) for k in new):
            return record
    return None


def changes(before: SystemState | None, after: SystemState) -> list[str]:
    """``field: old -> new`` for every field ``after`` changed (at most ``MAX_CHANGES`` lines,
    then how many more).  A record that appears or goes as a whole (a device at realize) is
    one line; queued messages are left to the headline."""
    if before is None:
        return []
    old, new = state_facts(before), state_facts(after)
    diff: list[str] = []
    whole: set[str] = set()
    for key in sorted(set(old) | set(new), key=_order):
        if key.startswith("ch") or old.get(key) == new.get(key):
            continue
        record = _whole_record(key, old, new)
        if record is None:
            diff.append(f"{key}: {old.get(key, '-')} -> {new.get(key, '-')}")
        elif record not in whole:
            whole.add(record)
            side = new if any(_under(k, record) for k in new) else old
            inner = ", ".join(f"{k[len(record) + 1:]}={v}" for k, v in side.items()
                              if _under(k, record))
            verb = "created" if side is new else "gone"
            diff.append(f"{record}: {verb}" + (f" ({inner})" if len(inner) <= 40 else ""))
    if len(diff) > MAX_CHANGES:
        diff = [*diff[:MAX_CHANGES - 1], f"... and {len(diff) - MAX_CHANGES + 1} more changes"]
    return diff or ["(no change)"]


def _natural(key: str) -> tuple[Any, ...]:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def state_label(state: SystemState, before: SystemState | None = None) -> str:
    """The headline, then what changed since ``before`` (the state it was reached from)."""
    lines = headline(state)
    if before is not None:
        lines += changes(before, state)
    return "\n".join(lines)


def state_color(state: SystemState) -> str:
    kinds = [ep.fate.kind for ep in state.endpoints if ep.fate is not None]
    if not kinds:
        return "black"
    return FATE_COLORS.get(max(kinds, key=lambda k: _FATE_RANK.index(k) if k in _FATE_RANK
                               else -1), "gray")


def action_label(action: Action) -> str:
    fields_ = action.to_json()
    name = fields_.pop("action")
    fields_.pop("props", None)
    return " ".join([name, *(str(v) for v in fields_.values())])


def _disambiguate(graph: Any, nodes: list[Any]) -> None:
    """Where different states still carry one label, add the fields that tell them apart."""
    groups: dict[str, list[Any]] = {}
    for node in nodes:
        groups.setdefault(graph.nodes[node]["label"], []).append(node)
    for group in groups.values():
        states = {graph.nodes[n]["state"] for n in group}
        if len(states) < 2:
            continue
        facts = [state_facts(graph.nodes[n]["state"]) for n in group]
        keys = sorted({k for f in facts for k in f}, key=_natural)
        differ = [k for k in keys if len({f.get(k, "-") for f in facts}) > 1]
        for node, f in zip(group, facts, strict=True):
            shown = [f"{k}={f.get(k, '-')}" for k in differ[:3]]
            more = f" (+{len(differ) - 3})" if len(differ) > 3 else ""
            graph.nodes[node]["label"] += "\nunlike others: " + " ".join(shown) + more


def _decorate(graph: Any) -> Any:
    for node, data in graph.nodes(data=True):
        state = data["state"]
        before = data.get("before")
        data["label"] = state_label(state, before)
        data["color"] = state_color(state)
        data["violations"] = [name for name, _ in violations(state)]
        if data["violations"]:
            data["label"] += "\nVIOLATES " + ", ".join(data["violations"])
        if node == graph.graph.get("root"):
            data["label"] = "initial state\n" + data["label"]
    for _, _, data in graph.edges(data=True):
        data["label"] = action_label(data["action"])
    main = [n for n, d in graph.nodes(data=True) if d.get("on_path", True)]
    _disambiguate(graph, main)
    return graph


def state_graph(config: Config, variant: Variant, depth: int, max_states: int = 2000,
                symmetry: bool = False) -> Any:
    """The configuration's state graph, breadth-first to ``depth`` (at most ``max_states``).

    Each state's label says what changed against the state it was first reached from."""
    result = explore(config, variant, ExploreOptions(
        max_depth=depth, max_states=max_states, time_limit=600.0, graph=True,
        symmetry=symmetry))
    graph = result.graph
    root = next((n for n, d in graph.in_degree() if d == 0), None)
    if root is None and graph.number_of_nodes():
        root = next(iter(graph.nodes))
    graph.graph["root"] = root
    if root is not None:
        for parent, child in nx.bfs_edges(graph, root):
            graph.nodes[child]["before"] = graph.nodes[parent]["state"]
    return _decorate(graph)


def counterexample_graph(config: Config, variant: Variant, steps: tuple[Action, ...]) -> Any:
    """The path of a trace, with every sibling transition out of each state on it.

    Path nodes are ``p0``, ``p1``, ... (``on_path`` set); siblings ``p<i>s<j>``."""
    graph = nx.DiGraph(kind="counterexample", root="p0")
    state = initial_state(config, variant)
    graph.add_node("p0", state=state, on_path=True)
    for i, action in enumerate(steps):
        outcome = step(state, action)
        if outcome is None:
            break
        for j, (other, nxt, _) in enumerate(successors(state)):
            if other != action:
                graph.add_node(f"p{i}s{j}", state=nxt, on_path=False, before=state)
                graph.add_edge(f"p{i}", f"p{i}s{j}", action=other, on_path=False)
        graph.add_node(f"p{i + 1}", state=outcome[0], on_path=True, before=state)
        graph.add_edge(f"p{i}", f"p{i + 1}", action=action, on_path=True, index=i)
        state = outcome[0]
    return _decorate(graph)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(text: str) -> str:
    """A DOT label whose lines are left-justified (``\\l`` ends each line)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\l") + '\\l"'


LEGEND = [
    "how to read this picture",
    "e0, e1  endpoints (processes); conn = connected to the server",
    "dev id=N  its ivshmem device and the ID the server gave it",
    "queue=[..]  messages waiting for it: value, and fd kind if any",
    "a: x -> y  field a changed from x to y in this step (dev: the",
    "        device, srv: the server, fdN: a descriptor, owner -1 =",
    "        in flight in a message, objN: an eventfd or shared memory)",
    "also enabled here  the other actions possible in that state;",
    "        => names the violation or fate they would lead to",
    "double border  the state violates a property (VIOLATES ...)",
    "colour  red aborted, dark red crashed, orange failed, purple hung",
]


def _sibling_note(graph: Any, node: Any) -> str | None:
    """The other actions enabled in a path state, one line each, with where they lead."""
    rows = []
    for _, child, data in graph.out_edges(node, data=True):
        if data.get("on_path"):
            continue
        target = graph.nodes[child]
        mark = ""
        fates = [ep.fate.kind for ep in target["state"].endpoints if ep.fate is not None]
        before = [ep.fate.kind for ep in graph.nodes[node]["state"].endpoints
                  if ep.fate is not None]
        if target["violations"] and not graph.nodes[node]["violations"]:
            mark = "  => " + ", ".join(target["violations"])
        elif len(fates) > len(before):
            mark = "  => " + fates[-1]
        rows.append(data["label"] + mark)
    if not rows:
        return None
    rows.sort(key=lambda r: ("=>" not in r, r))
    shown = rows[:MAX_SIBLINGS]
    if len(rows) > MAX_SIBLINGS:
        shown.append(f"... and {len(rows) - MAX_SIBLINGS} more")
    return "\n".join([f"also enabled here ({len(rows)}):", *shown])


def to_dot(graph: Any, name: str = "ivshmem") -> str:
    """DOT text: states top to bottom, a legend; for a counterexample, its path with the
    other choices at each step in a box beside it."""
    path_only = graph.graph.get("kind") == "counterexample"
    out = [f"digraph {_quote(name)} {{", "  rankdir=TB; nodesep=0.3; ranksep=0.35;",
           '  node [shape=box, fontname="monospace", fontsize=10];',
           '  edge [fontname="monospace", fontsize=10];']
    last = None
    for node, data in graph.nodes(data=True):
        if path_only and not data.get("on_path"):
            continue
        attrs = [f"label={_label(data.get('label', str(node)))}",
                 f"color={_quote(data.get('color', 'black'))}"]
        if data.get("violations"):
            attrs.append("peripheries=2")
            attrs.append(f"tooltip={_quote(', '.join(data['violations']))}")
        if data.get("on_path") and path_only:
            attrs.append("penwidth=2")
        out.append(f"  {_quote(str(node))} [{', '.join(attrs)}];")
        last = node
        if path_only:
            note = _sibling_note(graph, node)
            if note is not None:
                out.append(f"  {_quote(str(node) + '-others')} [label={_label(note)}, "
                           'shape=note, color=gray50, fontcolor=gray30, fontsize=9];')
                out.append(f"  {_quote(str(node))} -> {_quote(str(node) + '-others')} "
                           "[style=dashed, color=gray60, arrowhead=none];")
                out.append(f"  {{rank=same; {_quote(str(node))}; "
                           f"{_quote(str(node) + '-others')};}}")
    for a, b, data in graph.edges(data=True):
        if path_only and not data.get("on_path"):
            continue
        label = data.get("label", "")
        if "index" in data:
            label = f"step {data['index']}: {label}"
        attrs = [f"label={_quote(label)}"]
        if data.get("on_path") and path_only:
            attrs.append("penwidth=2")
        out.append(f"  {_quote(str(a))} -> {_quote(str(b))} [{', '.join(attrs)}];")
    out.append(f"  legend [label={_label(chr(10).join(LEGEND))}, shape=note, color=gray50, "
               "fontsize=9];")
    if last is not None and path_only:
        out.append(f"  {_quote(str(last))} -> legend [style=invis];")
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


def sequence_dot(config: Config, variant: Variant, steps: tuple[Action, ...],
                 name: str = "ivshmem") -> str:
    """A message sequence chart of a trace: one lifeline for the server and one per endpoint,
    time flowing down; each step is a box on the lifeline of the endpoint that acts, each
    message the server sends an arrow labelled with its value and the kind of fd it carries."""
    lanes = ["server", *(f"e{e}" for e in range(config.endpoints))]
    rows: list[tuple[str, str, str]] = []  # (kind, lane or "to", text)
    state = initial_state(config, variant)
    for i, action in enumerate(steps):
        outcome = step(state, action)
        if outcome is None:
            rows.append(("step", "server", f"step {i}: {action_label(action)} (not enabled)"))
            break
        actor = action.to_json().get("endpoint")
        rows.append(("step", "server" if actor is None else f"e{actor}",
                     f"{i}: {action_label(action)}"))
        state, obs = outcome
        for o in obs:
            if "send" in o:
                sent = o["send"]
                fd = f" + {sent['fd']} fd" if sent["fd"] else ""
                rows.append(("send", f"e{sent['to']}", f"{sent['value']}{fd}"))
            elif "fate" in o:
                rows.append(("step", "server" if actor is None else f"e{actor}",
                             f"{o['fate']}: {o.get('reason', '')}"[:48]))
    out = [f"digraph {_quote(name)} {{",
           "  rankdir=TB; nodesep=1.2; ranksep=0.18; splines=line; newrank=true;",
           '  node [fontname="monospace", fontsize=10];',
           '  edge [fontname="monospace", fontsize=10];']
    heads = " ".join(f"{_quote(lane)};" for lane in lanes)
    for lane in lanes:
        out.append(f"  {_quote(lane)} [shape=box, style=bold, group={_quote(lane)}];")
    out.append(f"  {{rank=same; {heads}}}")
    for a, b in itertools.pairwise(lanes):
        out.append(f"  {_quote(a)} -> {_quote(b)} [style=invis];")
    for r, (kind, lane, text) in enumerate(rows):
        cells = {x: f"{x}.{r}" for x in lanes}
        for x in lanes:
            if kind == "step" and x == lane:
                out.append(f"  {_quote(cells[x])} [shape=box, label={_quote(text)}, "
                           f"color=gray40, group={_quote(x)}];")
            else:
                out.append(f"  {_quote(cells[x])} [shape=point, width=0.01, color=gray60, "
                           f"group={_quote(x)}];")
        out.append("  {rank=same; " + " ".join(f"{_quote(c)};" for c in cells.values()) + "}")
        for a, b in itertools.pairwise(lanes):
            out.append(f"  {_quote(cells[a])} -> {_quote(cells[b])} [style=invis];")
        if kind == "send":
            out.append(f"  {_quote(cells['server'])} -> {_quote(cells[lane])} "
                       f"[label={_quote(text)}, constraint=false, color=blue, "
                       "fontcolor=blue];")
        for x in lanes:
            above = x if r == 0 else f"{x}.{r - 1}"
            out.append(f"  {_quote(above)} -> {_quote(cells[x])} [arrowhead=none, "
                       "color=gray70, style=dashed];")
    out.append("}")
    return "\n".join(out) + "\n"
