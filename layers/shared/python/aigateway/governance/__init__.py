"""Money and limits: pricing, ledger entries (budgets, rate limits and rollups build on these)."""
