"""SQL backends for Stent."""
