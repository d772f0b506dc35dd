"""Trace-driven energy benchmark: a fleet simulator, the baseline policies users run today, and Wattkeeper.

`trace` reads Azure-format request traces, `groundtruth` gives each replica its step times and power (measured
ML.ENERGY points where they exist, the calibrated model elsewhere), `fleet` replays a trace through replicas of
the runtime's `BatchingEngine` behind a router, `policies` decide the fleet's configuration over time, `report`
summarises, and `cli` is `wattkeeper bench`.
"""
