"""fedrecon.server package."""
