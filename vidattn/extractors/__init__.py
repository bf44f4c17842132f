"""Frozen feature extractors; see vidattn.registry.EXTRACTORS.

Only facts that need no torch live here, so a command can read them before torch loads.
"""

# A backbone named ``pytorchvideo:NAME`` is one of the zoo's models (see hub.py).
HUB_PREFIX = "pytorchvideo:"


def is_hub(backbone: str) -> bool:
    """Whether ``backbone`` names a pytorchvideo zoo model."""
    return backbone.startswith(HUB_PREFIX)
