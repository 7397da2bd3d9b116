"""canarycast: LSTM time-series forecasts over gRPC, shipped safely with canaries.

This package is the core every other layer shares: the generated stubs (`canarycast.v1`),
the typed clients, errors and the one interceptor that maps them to status codes,
validation, messages, spans, variants, telemetry, TLS, tokens, environment variables,
worker processes and the process runner. It imports nothing of `server/`, `router/` or
`cli/`, and no torch, scipy, pandas or matplotlib (import contracts in pyproject.toml).
"""

__version__ = "0.1.0"
