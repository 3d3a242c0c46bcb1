"""hack/bench: benchmarks of the fleet and of kubelbd, reported as medians and p99."""
