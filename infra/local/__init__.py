"""The embedded runtime: the synthesized stack served on one machine (DESIGN §7)."""
