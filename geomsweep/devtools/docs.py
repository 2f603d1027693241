"""The docs' generated pages: the config reference (from the schema's field help), the metric and tag keys (from
``keys/``, the one place each is spelled, and the golden lists the tests pin), and the benchmarks (from ``make
bench``'s JSON). ``docs/hooks.py`` writes them before mkdocs builds; ``python -m geomsweep.devtools docs OUT``
writes them anywhere."""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from pathlib import Path

from geomsweep.config import reference
from geomsweep.keys import metrics, tags

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
RUN_KINDS = {
    "trace_run_keys.txt": "a trace (`python -m geomsweep`, the toy)",
    "sft_run_keys.txt": "an SFT run",
    "dpo_run_keys.txt": "a DPO run",
    "rlvr_run_keys.txt": "an RLVR run",
    "sweep_parent_keys.txt": "a sweep's parent run",
}


def constants(module) -> list[tuple[str, str, str]]:
    """(name, value, comment) of each string constant a keys module spells (``A, B = "x", "y"  # why`` gives two)."""
    source = Path(module.__file__).read_text()
    comments = {
        tok.start[0]: tok.string.lstrip("# ").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    out = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign):
            continue
        names = [t.id for t in getattr(node.targets[0], "elts", node.targets)]
        values = getattr(node.value, "elts", [node.value])
        for name, value in zip(names, values):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.append((name, value.value, comments.get(node.lineno, "")))
    return out


def keys_table(module, prefix: str = "") -> list[str]:
    rows = ["| key | constant | meaning |", "|---|---|---|"]
    escape = lambda text: text.replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731  not HTML tags
    rows += [
        f"| `{value}` | `{name}` | {escape(comment)} |"
        for name, value, comment in constants(module)
        if name.startswith(prefix)
    ]
    return rows


def metrics_markdown() -> str:
    out = ["# Metric keys", "", metrics.__doc__.strip(), "", "## Spelled in `geomsweep/keys/metrics.py`", ""]
    out += keys_table(metrics)
    out += [
        "",
        "## Every key a run writes",
        "",
        "The golden lists `tests/golden/` pins (a test fails on any change):",
        "",
    ]
    for name, kind in RUN_KINDS.items():
        keys = [line.split(" ", 1) for line in (GOLDEN / name).read_text().splitlines() if line.strip()]
        listed = ", ".join(f"`{key}`" for what, key in keys if what == "metric")
        out += [f"**{kind}**: {listed}", ""]
    return "\n".join(out)


def tags_markdown() -> str:
    out = ["# Tag keys", "", tags.__doc__.strip(), "", "## Spelled in `geomsweep/keys/tags.py`", ""]
    out += keys_table(tags, prefix="TAG_")
    roles = ", ".join(f"`{value}`" for name, value, _ in constants(tags) if name.startswith("ROLE_"))
    out += ["", f"`{tags.TAG_ROLE}` is one of {roles}. `tests/golden/tag_keys.txt` pins every key.", ""]
    return "\n".join(out)


def benchmarks_markdown(results: Path) -> str:
    """``make bench``'s last results (``docs/benchmarks.json``: its date, machine and lines), as a page."""
    bench = ast.get_docstring(ast.parse((REPO / "geomsweep" / "devtools" / "bench.py").read_text()))
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench`: every figure is a ratio against a baseline measured in the same process, on the",
        "machine and at the date below. What each part compares (`geomsweep/devtools/bench.py`):",
        "",
        "```text",
        bench,
        "```",
        "",
        "`make bench-gpu` measures on one CUDA GPU what a CPU cannot (`geomsweep/devtools/bench_gpu.py`); it has not",
        "been run: no GPU has been lent to this project's sessions.",
        "",
    ]
    if not results.is_file():
        return "\n".join([*out, "No results yet: run `make bench`."])
    data = json.loads(results.read_text())
    out += [f"**{data['date']}**, on {data['machine']}", "", "```text", *data["lines"], "```", ""]
    return "\n".join(out)


def pages(docs: Path) -> dict[str, str]:
    """Each generated page's path under ``docs`` and its text."""
    return {
        "reference/config.md": reference.markdown(),
        "reference/metrics.md": metrics_markdown(),
        "reference/tags.md": tags_markdown(),
        "benchmarks.md": benchmarks_markdown(docs / "benchmarks.json"),
    }


def write(docs: Path) -> list[Path]:
    """Write the pages that changed (mkdocs serve would rebuild forever on a rewrite of the same text)."""
    written = []
    for name, text in pages(docs).items():
        path = docs / name
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", nargs="?", default=str(REPO / "docs"), help="the docs folder (default: docs/)")


def command(args: argparse.Namespace) -> None:
    for path in write(Path(args.out)):
        print(f"wrote {path}")
