"""Tables and plots for reports (markdown + PNG), shared by the CLI and the benchmarks."""
