"""Estimates made before anything loads: a post-training job's memory, and what it measures at its peak."""
