"""Trained weights: downloads, Replicate trainer tars, LoRA formats, resident adapters."""
