"""mkdocs hook: the generated pages (geomsweep/devtools/docs.py) are written before each build."""

from pathlib import Path

from geomsweep.devtools.docs import write


def on_pre_build(config, **kwargs):
    write(Path(config["docs_dir"]))
