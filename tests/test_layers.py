"""The one-way house: geomsweep's folders are its layers, and each imports only the layers below it.

The graph is built over the package as it is installed (``post_training/`` inside ``geomsweep/``, as the wheel lays
it out), in a process of its own so the editable install's mapping does not hide the copy.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

# Highest first: a layer may import any layer below it, never one above.
# The two pipelines, trace and post-training, are peers: neither imports the other.
LAYERS = [
    "devtools",
    "app",
    ["post_training", "trace"],
    "estimate",
    "plugins",
    "results",
    "tracking",
    "behavior",
    "sources",
    "config",
    "core",
    "keys",
]
# What the pure core may import from outside the standard library.
CORE_EXTERNALS = {"torch", "tqdm", "numpy"}

CHECK = textwrap.dedent(
    """
    import json, sys
    import grimp
    graph = grimp.build_graph("geomsweep", include_external_packages=True)
    names = json.loads(sys.argv[1])
    layers = [{f"geomsweep.{n}" for n in name} if isinstance(name, list) else f"geomsweep.{name}" for name in names]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    flat = [f"geomsweep.{n}" for name in names for n in (name if isinstance(name, list) else [name])]
    stdlib = sys.stdlib_module_names
    externals = {m for m in graph.modules if "." not in m and m != "geomsweep" and m not in stdlib}
    reach = lambda m: graph.find_shortest_chain(importer="geomsweep.core", imported=m, as_packages=True)
    core = sorted(m for m in externals if reach(m))
    print(json.dumps({
        "illegal": sorted(f"{d.importer} -> {d.imported}: {[str(r) for r in d.routes][:2]}" for d in illegal),
        "core_externals": core,
        "cycle_breakers": {p: sorted(graph.nominate_cycle_breakers(p)) for p in [*flat, "geomsweep.sources.toy"]},
        "modules": sorted(m for m in graph.modules if m.startswith("geomsweep.")),
    }))
    """
)


def installed_layout(root):
    """geomsweep/ with post_training/ inside it, as the wheel installs them."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "geomsweep", root / "geomsweep", ignore=skip)
    shutil.copytree(REPO / "post_training", root / "geomsweep" / "post_training", ignore=skip)
    return root


def contract(root) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(LAYERS)],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def main_contract(tmp_path_factory):
    return contract(installed_layout(tmp_path_factory.mktemp("layout")))


def test_every_folder_is_a_layer_and_no_import_runs_up(main_contract):
    assert main_contract["illegal"] == []
    modules = main_contract["modules"]
    flat = [name for layer in LAYERS for name in (layer if isinstance(layer, list) else [layer])]
    for layer in flat:  # each layer holds modules: the contract is about real code
        assert any(m.startswith(f"geomsweep.{layer}.") for m in modules), layer
    assert not [m for m in modules if m.count(".") == 1 and m.split(".")[1] not in {*flat, "conf", "__main__"}]


def test_the_core_imports_only_torch_and_its_helpers(main_contract):
    assert "torch" in main_contract["core_externals"]
    assert set(main_contract["core_externals"]) <= CORE_EXTERNALS


def test_no_import_cycles_inside_a_layer(main_contract):
    assert main_contract["cycle_breakers"] == {p: [] for p in main_contract["cycle_breakers"]}


@pytest.mark.parametrize(
    ("module", "upward"),
    [("core/spectra.py", "geomsweep.tracking.writer"), ("sources/data.py", "geomsweep.behavior.passk")],
)
def test_the_contract_fails_on_an_upward_import(tmp_path, module, upward):
    root = installed_layout(tmp_path)
    with open(root / "geomsweep" / module, "a") as f:
        f.write(f"\nimport {upward}  # an upward import\n")
    illegal = contract(root)["illegal"]
    assert len(illegal) == 1 and upward.rsplit(".", 1)[0] in illegal[0]


def test_the_wheel_ships_every_package():
    """A folder missing from pyproject's package list installs nowhere: the wheel would fail on import."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "geomsweep").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
