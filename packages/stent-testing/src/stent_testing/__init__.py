"""Testing kit for Stent."""
