"""The one-way house: the measuring core knows nothing of training, tracking or the CLI; nothing under geomsweep/
imports post_training; no import cycles."""

import grimp
import pytest


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("geomsweep", "post_training", include_external_packages=True)


def test_geomsweep_never_imports_post_training(graph):
    assert not graph.find_shortest_chains(importer="geomsweep", imported="post_training", as_packages=True)


CORE = ["geomsweep.spectra", "geomsweep.extract", "geomsweep.measure", "geomsweep.processes", "geomsweep.phases"]


@pytest.mark.parametrize("module", CORE)
@pytest.mark.parametrize(
    "outside",
    ["mlflow", "hydra", "omegaconf", "trl", "geomsweep.tracking", "geomsweep.job", "geomsweep.schema", "post_training"],
)
def test_the_core_knows_nothing_of_training_tracking_or_the_cli(graph, module, outside):
    if outside in graph.modules:  # an external package nothing imports is not in the graph at all
        assert graph.find_shortest_chain(importer=module, imported=outside) is None


@pytest.mark.parametrize("package", ["geomsweep", "geomsweep.behavior", "geomsweep.toy", "post_training"])
def test_no_import_cycles(graph, package):
    """grimp's cycle breakers of a package: the imports whose removal would leave its children acyclic (none)."""
    assert graph.nominate_cycle_breakers(package) == set()
