"""The model: two parts, one direction.

- `server.lifecycle`: data, the LSTM, training, scoring, the registry, the observation
  store, drift, retraining and the pipeline's stages (torch lives here, and only where a
  model is trained or run; the registry and the observation store are torch-free).
- `server.serving`: one model server process (loader, dynamic batching, the `Forecaster`
  service, metrics, the app). Serving imports the lifecycle, never the reverse.

May import: `canarycast` (the core). Never `router/` or `cli/`.
"""
