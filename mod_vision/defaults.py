"""Defaults that the API, the CLI and the tools share, so that each is written once."""

# The capacities a sweep, `model.info()` and the benchmarks report when none are given: dense, then halving the
# routed tokens down to an eighth (a routed block's cost stops falling much below that: its router still scores all N).
DEFAULT_CAPACITIES = (1.0, 0.5, 0.25, 0.125)
