"""fedrecon.experiments package."""
