"""The state graph, its DOT text and the ``graph`` subcommand."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from helpers import contrib, doorbell, scripted

from model.actions import Connect, ServerExit, Trace
from model.variants import SEED
from properties import explore_cli
from properties.explore import ExploreOptions, explore
from properties.graph import counterexample_graph, state_graph, to_dot


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    explore_cli.add_subcommands(parser.add_subparsers(dest="command"))
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
