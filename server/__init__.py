"""One model server: data, the LSTM, its training, the registry and the gRPC service."""
