"""The distributed runtime: a pool of replica actors and Ray start-up — the only place in the core that imports Ray,
on first use."""
