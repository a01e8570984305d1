"""CLI commands, one module per area, each registering on the apps of ``crmsync.cli``.

Kept apart from ``cli.py`` so each area's commands live beside nothing else.
"""
