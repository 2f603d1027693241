"""geomsweep: trace the representation geometry of language models through pretraining and post-training, as Hydra
sweeps logged to MLflow. Folders are layers, each importing only those below it (``tests/test_layers.py``):
``post_training`` > ``app`` > ``plugins`` > ``results`` > ``tracking`` > ``config`` > ``behavior`` > ``sources`` >
``core``."""

from importlib import metadata

try:
    __version__ = metadata.version("geomsweep")  # from the installed package's metadata (pyproject.toml)
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
