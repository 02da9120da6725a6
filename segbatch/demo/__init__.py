"""Built-in demo: synthetic street scenes and the demo model."""
