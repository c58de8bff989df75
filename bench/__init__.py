"""The side-by-side benchmark (issue 7): load generator, targets and runner."""
