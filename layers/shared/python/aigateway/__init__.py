"""The shared library of the Serverless AI Gateway (see docs/architecture.md for its rooms)."""
