"""The model lifecycle: data, the LSTM, training, scoring, the registry, the observation
store, drift, retraining and the DVC pipeline's stages. Imports nothing of serving."""
