"""Distillery's domain package: settings, models and services, free of any Functions host types."""
