"""fedrecon.client package."""
