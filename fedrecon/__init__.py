"""fedrecon: federated reconnaissance with prototype merging over gRPC."""

__version__ = "0.1.0"
