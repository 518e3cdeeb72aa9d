"""Curation: scores on stored completions, and bulk changes to everything a filter matches."""
