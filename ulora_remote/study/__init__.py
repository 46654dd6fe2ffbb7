"""Studies over many runs: compare tables, the multi-seed study, its report, statistics, plots."""
