"""Aliases: a deployment name callers use, routed to one or two deployments (canary, promotion, rollback)."""
