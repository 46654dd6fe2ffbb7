"""Running one scenario: builders, the runner, the run directory, console, summary and metrics."""
