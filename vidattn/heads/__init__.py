"""Attention heads trained on cached feature maps; see vidattn.registry.HEADS."""
