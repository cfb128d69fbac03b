"""fedrecon.benchmarks package."""
