"""Tools the function never imports: the CLI, packaging, proofs, benchmarks and the local dev agent."""
