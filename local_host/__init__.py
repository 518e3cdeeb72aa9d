"""A small stand-in for the Functions host: serves what `function_app.py` registers, on the same
port and paths as `func start`, with Azurite's queue service standing in for Service Bus."""
