"""Data: text datasets (built-in offline corpora, CSV/JSONL), image datasets, and batching rules."""
