"""The docs are checked: every config field has help, ``--help`` shows it, the README stays short, no page states a
timing without its date and machine, and every command a tutorial or how-to shows composes and passes the schema."""

import re
import shlex
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from geomsweep.config import reference
from geomsweep.config.checks import check
from tests.conftest import REPO

DOCS = REPO / "docs"
GUIDES = sorted([*(DOCS / "tutorials").glob("*.md"), *(DOCS / "how-to").glob("*.md")]) + [REPO / "README.md"]
# A duration, unless it is a setting the text names (a timeout, a wait, a backoff) rather than a measurement.
DURATION = re.compile(r"\b\d[\d.,]*\s?(ms|s|min|minutes?|seconds?|hours?)\b")
SETTING = re.compile(r"timeout|after \d+ s|backoff|apart|every \d+|lease|heartbeat|interval|stale", re.I)
DATED = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def test_every_config_field_has_help_and_the_reference_lists_it():
    rows = reference.rows()
    assert len(rows) > 150 and all(row.help.strip() for row in rows), [r.key for r in rows if not r.help.strip()]
    assert not [r.key for r in rows if "$" in r.help]  # Hydra's help template substitutes $NAMES
    page = reference.markdown()
    assert all(f"| `{row.key}` |" in page for row in rows)
    assert "| `eval.memorization.engine` | local \\| api | `local` |" in page


def test_help_shows_every_top_level_field_and_one_group_on_request():
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "geomsweep", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    page = run("--help")
    assert page.returncode == 0
    assert "python -m geomsweep --help GROUP" in page.stdout and "== Configuration groups" in page.stdout
    assert all(f"  {r.key} " in page.stdout for r in reference.rows() if "." not in r.key)
    probe = run("--help", "probe")
    assert probe.returncode == 0 and "probe.fit_start" in probe.stdout and "model.source" not in probe.stdout
    assert "presets: probe=" in probe.stdout
    wrong = run("--help", "nope")
    assert wrong.returncode == 1 and wrong.stderr.strip() == (
        f"geomsweep: no config group 'nope'; valid: {', '.join(reference.groups())} (or a nested one, e.g. "
        "eval.harness)"
    )


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_bytes()) <= 8 * 1024


@pytest.mark.parametrize("page", [REPO / "README.md", *sorted(DOCS.rglob("*.md"))], ids=lambda p: p.name)
def test_no_page_states_a_timing_without_its_date(page):
    if page.name in {"benchmarks.md", "CHANGELOG.md"}:  # the benchmarks are dated as a whole
        return
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # commands and their output
    undated = [
        sentence.strip()
        for sentence in re.split(r"(?<=[.;:])\s+", text)
        if DURATION.search(sentence) and not SETTING.search(sentence) and not DATED.search(sentence)
    ]
    assert not undated, undated


def commands(page) -> list[str]:
    """Every ``python -m geomsweep ...`` line a page shows (code blocks, fenced or indented in a list), continuation
    lines joined; a comment or a following ``&&`` left off."""
    found = []
    for line in page.read_text().replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].split(" && ")[0].strip().removeprefix("$ ")
        if re.match(r"^(\S*python) -m geomsweep( |$)", line) and "--help" not in line:
            found.append(line)
    return found


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.stem)
def test_every_command_in_a_guide_composes_and_passes_the_schema(page, tmp_path, monkeypatch):
    """Each job of each command shown (a sweep's every cell) is composed as Hydra would and checked by the schema."""
    monkeypatch.setenv("GEOMSWEEP_CACHE", str(tmp_path))
    shown = commands(page)
    for command in shown:
        args = [a for a in shlex.split(command)[3:] if a not in ("-m", "--multirun", "--cfg", "job")]
        overrides = [a for a in args if not a.startswith("hydra/launcher=") and not a.startswith("hydra.")]
        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
        for job in jobs:
            with initialize_config_module("geomsweep.conf", version_base="1.3"):
                check(compose("config", overrides=list(job)))


def test_the_tutorials_show_commands():
    assert all(commands(page) for page in (DOCS / "tutorials").glob("*.md"))


def test_the_benchmarks_page_is_what_make_bench_last_wrote():
    """docs/benchmarks.md is committed (the README links it): it must be the page its JSON and bench.py make
    (``python -m geomsweep.devtools docs`` rewrites it)."""
    from geomsweep.devtools.docs import benchmarks_markdown

    assert (DOCS / "benchmarks.md").read_text() == benchmarks_markdown(DOCS / "benchmarks.json")
