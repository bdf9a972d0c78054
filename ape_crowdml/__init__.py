"""crowdml: outsource randomized ML jobs to n paid workers through a public blockchain."""
