"""Speed and quality benchmarks that print machine-readable results."""
