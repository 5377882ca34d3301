"""A policy server: loads a checkpoint and answers predict_action requests over WebSocket.

    python -m policylab.serving.server --checkpoint outputs/.../checkpoints/latest [--port 8765]

Safe defaults: binds 127.0.0.1 (reach it from another machine through an SSH tunnel, or pass
--host deliberately), caps message size, and can require a shared token (`Authorization:
Bearer <token>` at the handshake). A malformed request gets an error reply; the server keeps
serving. Requests are answered one at a time: the policy is one model on one device.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import threading
from http import HTTPStatus

import numpy as np
import torch
import websockets
from websockets.asyncio.server import serve

from policylab.serving.protocol import ProtocolError, check_obs, decode, encode

log = logging.getLogger(__name__)


class PolicyServer:
    """Args:
        policy: any object with the policy contract (predict_action, shape_meta, n_obs_steps, n_action_steps).
        host / port: where to listen (port 0 picks a free one; see `.port` after start).
        token: shared secret clients must send; None accepts any local client.
        max_message_bytes: larger messages close that connection (WebSocket code 1009).
    """

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 max_message_bytes: int = 16 * 2**20):
        self.policy, self.host, self.port = policy, host, port
        self.token, self.max_message_bytes = token, max_message_bytes
        self.n_requests = self.n_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def schema(self) -> dict:
        return {"type": "schema", "shape_meta": self.policy.shape_meta, "n_obs_steps": self.policy.n_obs_steps,
                "n_action_steps": self.policy.n_action_steps}

    def handle(self, message) -> bytes:
        """One request -> one reply (an error reply for anything malformed)."""
        self.n_requests += 1
        try:
            header, arrays = decode(message)
            kind = header["type"]
            if kind == "ping":
                return encode({"type": "pong", "id": header.get("id")})
            if kind == "schema":
                return encode({**self.schema(), "id": header.get("id")})
            if kind == "predict":
                return encode({"type": "result", "id": header.get("id")}, self._predict(arrays))
            raise ProtocolError(f"unknown request type {kind!r}; use ping, schema or predict")
        except ProtocolError as err:
            self.n_errors += 1
            return encode({"type": "error", "message": str(err)})
        except Exception as err:  # a policy failure must not take the server down either
            self.n_errors += 1
            log.exception("predict_action failed")
            return encode({"type": "error", "message": f"policy error: {type(err).__name__}: {err}"})

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_obs(arrays, self.policy.shape_meta, self.policy.n_obs_steps)
        device = getattr(self.policy, "device", "cpu")
        obs = {k: torch.from_numpy(np.array(arrays[k], np.float32)).to(device) for k in self.policy.shape_meta["obs"]}
        with torch.no_grad():
            result = self.policy.predict_action(obs)
        return {k: result[k].detach().cpu().numpy().astype(np.float32)
                for k in ("action", "action_pred") if k in result}

    # ------------------------------------------------------------------ asyncio plumbing
    def _authorize(self, connection, request):
        if self.token is None:
            return None
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _connection(self, websocket) -> None:
        try:
            async for message in websocket:
                await websocket.send(await asyncio.to_thread(self.handle, message))
        except websockets.ConnectionClosed:
            pass

    async def serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._connection, self.host, self.port, max_size=self.max_message_bytes,
                         process_request=self._authorize, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("policy server on ws://%s:%d", self.host, self.port)
            self._ready.set()
            await self._stop.wait()

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> PolicyServer:
        """Serve from a background thread (returns once listening)."""
        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())

        self._thread = threading.Thread(target=run, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"policy server did not start on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5.0)
        self._ready.clear()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a policylab checkpoint directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None, help="shared token clients must present")
    parser.add_argument("--max-message-mb", type=float, default=16.0)
    args = parser.parse_args(argv)
    from policylab.policies.base import BasePolicy

    policy = BasePolicy.from_checkpoint(args.checkpoint, device=args.device).eval()
    server = PolicyServer(policy, args.host, args.port, args.token, int(args.max_message_mb * 2**20))
    asyncio.run(server.serve())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
