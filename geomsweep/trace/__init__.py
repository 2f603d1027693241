"""The trace pipeline (method=none): measure each pretraining checkpoint, log it, summarise the trace; and its plan."""
