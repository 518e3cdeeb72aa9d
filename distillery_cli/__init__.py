"""`distillery`: a command-line client of a Distillery deployment's HTTP API (`make run` or Azure)."""
