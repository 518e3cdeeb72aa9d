"""Redaction at capture: personal data found and replaced before a completion is stored."""
