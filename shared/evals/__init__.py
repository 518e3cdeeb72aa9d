"""The eval engine: OpenAI-Evals-compatible evals, runs and graders."""
