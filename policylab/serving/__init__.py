"""Remote inference: PolicyServer (a checkpoint behind a WebSocket) and RemotePolicy (its client)."""
