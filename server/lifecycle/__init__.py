"""The model lifecycle: data, the LSTM, training, scoring, the registry, the observation
store, drift, retraining and the DVC pipeline's stages.

May import: `canarycast` (the core). Never `server.serving`, `router/` or `cli/`. The
registry and the observation store load no torch, scipy or pandas at import."""
