"""Frozen feature extractors; see vidattn.registry.EXTRACTORS."""
