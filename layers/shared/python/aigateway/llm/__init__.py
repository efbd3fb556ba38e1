"""Model access: catalog, parameter profiles, client factory, token counting, simulated provider."""
