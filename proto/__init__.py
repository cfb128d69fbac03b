"""fedrecon.proto package."""
