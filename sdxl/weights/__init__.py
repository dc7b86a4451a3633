"""Weight files: the real SDXL download, and the offline builders (tiny models for tests)."""
