"""The pure measuring core: representations -> covariance -> metrics, and phases. Pure torch: it knows nothing of
training, tracking, Hydra or the CLI (``tests/test_layers.py`` holds it to that)."""
