"""The embedded toy world: a synthetic Zipfian language, its tokenizer, a tiny GPT-NeoX and its pretraining."""
