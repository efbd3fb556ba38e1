"""Resilience: what each provider failure means (policy), how long to wait (backoff), which models
are currently shunned (breaker), and the order of hops that can still answer (chain)."""
