"""The work behind each CLI command: one ``run(cfg)`` per module."""
