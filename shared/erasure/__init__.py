"""Forgetting completions: delete, purge, retention, and the copies they reach."""
