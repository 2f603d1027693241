"""What a model does when sampled or probed: sampling (hf, vLLM), pass@k, diversity, n-gram memorization and the
toy world's tasks."""
