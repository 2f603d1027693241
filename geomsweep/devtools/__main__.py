"""``python -m geomsweep.devtools <command>``: the tools around the runtime, one entry point.

bench      speed and memory ratios against baselines run in the same process (``make bench``)
bench-gpu  the memory plan and the geometry against CUDA's peak, on a GPU (``make bench-gpu``)
ui-check   what a person sees in the MLflow UI, checked in headless Chromium (``make ui-check``)
report     plots and a table comparing an experiment's runs
rollup     trace runs for the sharded jobs of an existing experiment
docs       the docs' generated pages: the config reference, metric and tag keys, benchmarks (``make docs``)
"""

from __future__ import annotations

import argparse
import importlib

COMMANDS = {  # name -> the module that holds its arguments() and command()
    "bench": "geomsweep.devtools.bench",
    "bench-gpu": "geomsweep.devtools.bench_gpu",
    "ui-check": "geomsweep.devtools.ui_check",
    "report": "geomsweep.results.report",
    "rollup": "geomsweep.results.rollup",
    "docs": "geomsweep.devtools.docs",
}


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        prog="python -m geomsweep.devtools", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="name", required=True, metavar="command")
    modules = {}
    for name, path in COMMANDS.items():
        modules[name] = module = importlib.import_module(path)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        module.arguments(commands.add_parser(name, help=summary, description=module.__doc__))
    args = parser.parse_args(argv)
    return modules[args.name].command(args)


if __name__ == "__main__":
    main()
