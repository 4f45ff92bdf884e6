"""Redis notifications for Stent (not implemented yet)."""
