"""Datasets: queue-triggered jobs that turn a selection of stored completions into JSONL files."""
