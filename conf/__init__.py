"""The Hydra config tree (config.yaml and its groups), shipped inside the package: ``pkg://geomsweep.conf``."""
