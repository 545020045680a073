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

from ivshmem_model.model.actions import TraceError, load_trace
from ivshmem_model.model.variants import VARIANTS, variant_option
from ivshmem_model.properties.graph import (
    GraphvizMissingError,
    counterexample_graph,
    render,
    sequence_dot,
    state_graph,
    to_dot,
)

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def variant_help(default: str = "seed") -> str:
    """The ``--variant`` help text, naming every variant."""
    before = [name for name in VARIANTS if name.startswith("before-")]
    return ("seed (the seed file as it is), qemu-7.2 (Debian's QEMU 7.2), qemu-10.0 "
            "(QEMU 10.0), fixed (our "
            "corrections), or before-COMMIT, a variant with one historical fix reverted: "
            f"{', '.join(before)} (default: {default})")


def cmd_graph(args: argparse.Namespace) -> int:
    from ivshmem_model.properties.configs import embedded_configs, load_config_file

    variant = variant_option(args.variant)
    if args.depth is not None and not 0 <= args.depth <= 64:
        raise TraceError(f"expected a depth in [0, 64], got {args.depth}", "--depth")
    dot_text: str | None = None
    if args.sequence:
        trace = load_trace(args.sequence)
        name = Path(args.sequence).stem
        dot_text = sequence_dot(trace.config, variant, trace.steps, name)
        graph: Any = None
    elif args.counterexample:
        trace = load_trace(args.counterexample)
        graph = counterexample_graph(trace.config, variant, trace.steps)
        name = Path(args.counterexample).stem
    else:
        named = load_config_file(args.config) if args.config else embedded_configs()[0]
        depth = args.depth if args.depth is not None else 3
        graph = state_graph(named.config, variant, depth, args.max_states, args.symmetry)
        name = f"{named.name}-{variant.name}-depth-{depth}"
    try:
        data = render(dot_text if dot_text is not None else to_dot(graph, name), args.format)
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
        what = ("a message sequence chart" if graph is None else
                f"{graph.number_of_nodes()} states, {graph.number_of_edges()} transitions")
        print(f"{what} -> {args.output}", file=sys.stderr)
    return EXIT_OK


def add_subcommands(subparsers: Any) -> None:
    graph = subparsers.add_parser(
        "graph", help="draw the state graph of a configuration or a counterexample's neighbourhood")
    graph.add_argument("--config", metavar="FILE", help="a configuration file")
    graph.add_argument("--variant", default="seed", metavar="V", help=variant_help())
    graph.add_argument("--depth", type=int, default=None, help="depth bound (default: 3)")
    graph.add_argument("--max-states", type=int, default=2000,
                       help="state bound (default: %(default)s)")
    graph.add_argument("--symmetry", action="store_true",
                       help="one state per orbit of interchangeable endpoints")
    graph.add_argument("--counterexample", metavar="FILE",
                       help="a trace or counterexample file: draw its path and siblings")
    graph.add_argument("--sequence", metavar="FILE",
                       help="a trace or counterexample file: draw its message sequence chart "
                            "(what the server sent to whom, step by step)")
    graph.add_argument("--format", choices=("dot", "svg", "png"), default="dot")
    graph.add_argument("-o", "--output", metavar="OUT", default=None,
                       help="output file (default: DOT on stdout)")
    graph.set_defaults(func=cmd_graph)
