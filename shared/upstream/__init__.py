"""Calls to the model API: the HTTP upstream, the offline model, and model calls for the service's own work."""
