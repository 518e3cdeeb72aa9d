"""Distill: datasets become fine-tuning jobs on the upstream."""
