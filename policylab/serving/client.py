"""RemotePolicy: the policy contract, answered by a PolicyServer over WebSocket.

It has the attributes eval loops read (`shape_meta`, `n_obs_steps`, `n_action_steps`), fetched
from the server's declared schema, so `eval_real_robot.py policy=remote` needs nothing else.
"""

from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np
import torch

from policylab.common.extras import require
from policylab.serving.protocol import decode, encode

connect = require("websockets.sync.client", extra="serving").connect


class RemotePolicyError(RuntimeError):
    """The server answered with an error, or could not be reached in time."""


class RemotePolicy:
    """Args: url (ws://host:port), token (shared secret; None reads POLICYLAB_SERVER_TOKEN, if set),
    timeout (s per request)."""

    def __init__(self, url: str = "ws://127.0.0.1:8765", token: str | None = None, timeout: float = 5.0,
                 max_message_bytes: int = 16 * 2**20):
        token = token or os.environ.get("POLICYLAB_SERVER_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.timeout = timeout
        self._stack = contextlib.ExitStack()
        try:
            self._ws = self._stack.enter_context(connect(url, additional_headers=headers, max_size=max_message_bytes,
                                                         open_timeout=timeout, compression=None))
        except Exception as err:
            raise RemotePolicyError(f"cannot reach the policy server at {url}: {err}") from err
        self._ids = itertools.count()
        schema, _ = self._request({"type": "schema"})
        self.shape_meta = schema["shape_meta"]
        self.n_obs_steps, self.n_action_steps = schema["n_obs_steps"], schema["n_action_steps"]
        self.device = torch.device("cpu")

    def _request(self, header: dict, arrays=None) -> tuple[dict, dict]:
        request_id = next(self._ids)
        try:
            self._ws.send(encode({**header, "id": request_id}, arrays))
            reply, arrays = decode(self._ws.recv(timeout=self.timeout))
        except TimeoutError as err:
            raise RemotePolicyError(f"no reply from the policy server within {self.timeout} s") from err
        if reply["type"] == "error":
            raise RemotePolicyError(f"policy server: {reply.get('message')}")
        if reply.get("id") != request_id:
            raise RemotePolicyError(f"reply to request {reply.get('id')} while waiting for {request_id}")
        return reply, arrays

    def predict_action(self, obs: dict) -> dict[str, torch.Tensor]:
        """obs `{key: (B, To, ...)}` tensors -> `{"action": (B, Ta, Da), "action_pred": (B, T, Da)}`."""
        arrays = {k: np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, np.float32) for k, v in obs.items()}
        _, result = self._request({"type": "predict"}, arrays)
        return {k: torch.from_numpy(np.array(v)) for k, v in result.items()}

    def eval(self) -> RemotePolicy:
        return self

    def close(self) -> None:
        self._stack.close()
