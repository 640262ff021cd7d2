"""Benchmark tools: the load generator, ceiling servers and the harness that compares them."""
