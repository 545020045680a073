"""The state graph, its DOT text and the ``graph`` subcommand."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import contrib, doorbell, scripted

from ivshmem_model import graph_cli
from ivshmem_model.model.actions import (
    Action,
    Connect,
    MmioRead,
    ServerExit,
    Trace,
    load_counterexample,
)
from ivshmem_model.model.variants import SEED
from ivshmem_model.properties.explore import ExploreOptions, explore
from ivshmem_model.properties.graph import counterexample_graph, render, state_graph, to_dot

CORPUS = Path(__file__).resolve().parent.parent / "counterexamples"


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    graph_cli.add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_state_graph_has_labelled_states_and_action_edges() -> None:
    graph = state_graph(contrib(endpoints=1), SEED, depth=3)
    result = explore(contrib(endpoints=1), SEED, ExploreOptions(max_depth=3))
    assert (graph.number_of_nodes(), graph.number_of_edges()) <= (result.states,
                                                                  result.transitions)
    assert graph.number_of_nodes() == result.states
    labels = [d["label"] for _, d in graph.nodes(data=True)]
    assert any("e0 conn" in label for label in labels)
    assert {d["label"].split()[0] for _, _, d in graph.edges(data=True)} >= {"connect",
                                                                            "server_exit"}


def test_counterexample_graph_colours_the_hung_endpoint_purple() -> None:
    steps = (Connect(0), ServerExit(), doorbell(0))
    graph = counterexample_graph(scripted(), SEED, steps)
    assert graph.nodes["p3"]["color"] == "purple"
    assert graph.nodes["p3"]["violations"] == ["no_hang"]
    assert sum(1 for _, _, d in graph.edges(data=True) if d["on_path"]) == 3
    assert graph.number_of_edges() > 3  # siblings
    dot = to_dot(graph)
    assert dot.startswith('digraph "ivshmem" {') and "peripheries=2" in dot


def test_graph_command_writes_dot(tmp_path: Path) -> None:
    trace = Trace(scripted(), (Connect(0), ServerExit(), doorbell(0)))
    path = tmp_path / "hang.trace.json"
    path.write_text(json.dumps(trace.to_json()))
    out = tmp_path / "hang.dot"
    assert _main(["graph", "--counterexample", str(path), "-o", str(out)]) == 0
    assert "->" in out.read_text()


def test_graph_command_without_graphviz_is_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    assert _main(["graph", "--depth", "1", "--format", "svg", "-o",
                  str(tmp_path / "x.svg")]) == 2
    assert "graphviz" in capsys.readouterr().err


def _svg_size(svg: bytes) -> tuple[float, float]:
    """Width and height in pixels (Graphviz writes points: 1 pt = 4/3 px)."""
    match = re.search(rb'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    assert match is not None
    return float(match.group(1)) * 4 / 3, float(match.group(2)) * 4 / 3


def _ten_steps() -> tuple[Action, ...]:
    cx = load_counterexample(str(CORPUS / "peer-eventfds-freed-twice.json"))
    steps = cx.trace.steps
    return (*steps[:-1], MmioRead(0, 8, 4), MmioRead(0, 0, 4), steps[-1])


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's dot is not installed (scripts/install-graphviz.sh)")
def test_counterexample_picture_of_ten_steps_is_at_most_2000_px_wide() -> None:
    steps = _ten_steps()
    assert len(steps) == 10
    graph = counterexample_graph(contrib(), SEED, steps)
    width, height = _svg_size(render(to_dot(graph), "svg"))
    assert width <= 2000, (width, height)
    assert height > width  # laid out along the path


def test_counterexample_path_states_have_distinct_labels() -> None:
    graph = counterexample_graph(contrib(), SEED, _ten_steps())
    path = [n for n, d in graph.nodes(data=True) if d["on_path"]]
    by_state: dict[object, set[str]] = {}
    for node in path:
        by_state.setdefault(graph.nodes[node]["state"], set()).add(graph.nodes[node]["label"])
    labels = [label for group in by_state.values() for label in group]
    assert len(set(labels)) == len(labels) >= len(by_state)
    # what differs is shown: the double free's step names the freed block
    assert "e0.dev.peers[1].block: live -> freed" in graph.nodes["p7"]["label"]


def test_state_graph_labels_tell_distinct_states_apart() -> None:
    graph = state_graph(contrib(endpoints=2), SEED, depth=3)
    seen: dict[str, object] = {}
    for _, data in graph.nodes(data=True):
        other = seen.setdefault(data["label"], data["state"])
        assert other == data["state"], data["label"]


def test_pictures_carry_a_legend() -> None:
    for graph in (state_graph(contrib(endpoints=1), SEED, depth=1),
                  counterexample_graph(scripted(), SEED, (Connect(0), ServerExit()))):
        dot = to_dot(graph)
        assert "legend [" in dot
        for term in ("queue=", "double border", "purple hung", "also enabled here"):
            assert term in dot
