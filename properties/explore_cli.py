"""``ivshmem-model graph``: pictures of the explored state space (design §7).

``add_subcommands(subparsers)`` adds the subcommand; ``ivshmem_model/cli.py`` calls it.
``graph`` draws the configuration's state graph to a depth bound, or, with
``--counterexample FILE``, the neighbourhood of a trace: its path and every sibling transition.
DOT always works; SVG and PNG need Graphviz's ``dot`` (exit 2 with a clear message if absent).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from model.actions import TraceError, load_trace
from model.variants import variant_option
from properties.graph import (
    GraphvizMissingError,
    counterexample_graph,
    render,
    state_graph,
    to_dot,
)

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def cmd_graph(args: argparse.Namespace) -> int:
    from ivshmem_model.check import embedded_configs, load_config_file

    variant = variant_option(args.variant)
    if args.depth is not None and not 0 <= args.depth <= 64:
        raise TraceError(f"expected a depth in [0, 64], got {args.depth}", "--depth")
    if args.counterexample:
        trace = load_trace(args.counterexample)
        graph: Any = counterexample_graph(trace.config, variant, trace.steps)
        name = Path(args.counterexample).stem
    else:
        named = load_config_file(args.config) if args.config else embedded_configs()[0]
        depth = args.depth if args.depth is not None else 3
        graph = state_graph(named.config, variant, depth, args.max_states, args.symmetry)
        name = f"{named.name}-{variant.name}-depth-{depth}"
    try:
        data = render(to_dot(graph, name), args.format)
    except GraphvizMissingError as err:
        print(f"ivshmem-model graph: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output in (None, "-"):
        if args.format != "dot":
            print("ivshmem-model graph: binary output needs -o FILE", file=sys.stderr)
            return EXIT_BAD_INPUT
        sys.stdout.write(data.decode())
    else:
        Path(args.output).write_bytes(data)
        print(f"{graph.number_of_nodes()} states, {graph.number_of_edges()} transitions "
              f"-> {args.output}", file=sys.stderr)
    return EXIT_OK


def add_subcommands(subparsers: Any) -> None:
    graph = subparsers.add_parser(
        "graph", help="draw the state graph of a configuration or a counterexample's neighbourhood")
    graph.add_argument("--config", metavar="FILE", help="a configuration file")
    graph.add_argument("--variant", default="seed", help="variant (default: %(default)s)")
    graph.add_argument("--depth", type=int, default=None, help="depth bound (default: 3)")
    graph.add_argument("--max-states", type=int, default=2000,
                       help="state bound (default: %(default)s)")
    graph.add_argument("--symmetry", action="store_true",
                       help="one state per orbit of interchangeable endpoints")
    graph.add_argument("--counterexample", metavar="FILE",
                       help="a trace or counterexample file: draw its path and siblings")
    graph.add_argument("--format", choices=("dot", "svg", "png"), default="dot")
    graph.add_argument("-o", "--output", metavar="OUT", default=None,
                       help="output file (default: DOT on stdout)")
    graph.set_defaults(func=cmd_graph)
