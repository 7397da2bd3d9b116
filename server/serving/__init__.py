"""Serving: one model server process (the loader and hot reload, dynamic batching, the
`Forecaster` service, its metrics, the app).

May import: `server.lifecycle` and `canarycast`. Never `router/` or `cli/`."""
