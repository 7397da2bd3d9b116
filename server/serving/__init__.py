"""Serving: one model server process (the loader and hot reload, dynamic batching, the
`Forecaster` service, its metrics, the app). Imports the lifecycle, never the reverse."""
