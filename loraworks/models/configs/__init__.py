"""Data shipped with the manager: architecture templates per base and the CLIP merges."""
