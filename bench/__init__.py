"""The benchmark of evalstream (`make bench`): end-to-end throughput, latency, scale-out and the
seed-style baseline on one machine, printed as one table and written under bench/results/."""
