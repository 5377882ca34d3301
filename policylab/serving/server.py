"""A policy server: loads a checkpoint and answers predict_action requests over WebSocket.

    python -m policylab.serving.server --checkpoint outputs/.../checkpoints/latest [--port 8765]

    POLICYLAB_SERVER_TOKEN=... python -m policylab.serving.server --checkpoint ... --host 0.0.0.0
    python -m policylab.serving.server --checkpoint ... --host 0.0.0.0 --token-file <file>

Safe defaults: binds 127.0.0.1 (reach it from another machine through an SSH tunnel). Any other
address needs a shared token (`Authorization: Bearer <token>` at the handshake, compared in
constant time) or an explicit `--insecure`. The token comes from a file or the environment, never
from argv (which `ps` shows to every user). Message size, concurrent connections and batch size
are capped; a malformed request, or a policy output that is NaN or inf (e.g. for finite but extreme
inputs), gets an error reply and the server keeps serving. Each refused handshake or bad request
logs one line, at most `LOG_BURST` a minute (then one line counting what was left out), so a
client cannot grow the log without bound. A token file readable by group or others is refused.
Requests are answered one at a time, whichever connection sends them (a lock around the policy):
the policy is one model on one device.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import os
import threading
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np
import torch

from policylab.common.extras import require
from policylab.common.obs import to_policy_obs
from policylab.common.shape_meta import ShapeMeta
from policylab.serving.protocol import ProtocolError, check_obs, decode, encode

log = logging.getLogger(__name__)

TOKEN_ENV = "POLICYLAB_SERVER_TOKEN"
LOG_BURST = 20  # bad-request lines per LOG_WINDOW seconds; the rest are counted, not written
LOG_WINDOW = 60.0


class RateLimitedLog:
    """At most `burst` warning lines per `window` seconds; the first line after a full window
    says how many were left out. Called from the event loop and the request threads: locked."""

    def __init__(self, logger: logging.Logger, burst: int = LOG_BURST, window: float = LOG_WINDOW):
        self.logger, self.burst, self.window = logger, burst, window
        self._start, self._written, self._dropped = -float("inf"), 0, 0
        self._lock = threading.Lock()

    def __call__(self, message: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window:
                if self._dropped:
                    self.logger.warning("%d further bad requests in the last %.0f s were not logged",
                                        self._dropped, self.window)
                self._start, self._written, self._dropped = now, 0, 0
            if self._written >= self.burst:
                self._dropped += 1
                return
            self._written += 1
        self.logger.warning(message, *args)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False


class PolicyServer:
    """Args:
        policy: any object with the policy contract (predict_action, shape_meta, n_obs_steps, n_action_steps).
        host / port: where to listen (port 0 picks a free one; see `.port` after start).
        token: shared secret clients must send; required unless `host` is a loopback address or
            `insecure` is set.
        max_message_bytes: larger messages close that connection (WebSocket code 1009).
        max_connections: further clients are refused at the handshake (HTTP 503) while this many are open.
        max_batch: the largest batch B one predict request may carry.
    """

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 max_message_bytes: int = 16 * 2**20, max_connections: int = 16, max_batch: int = 64,
                 insecure: bool = False):
        if not token and not insecure and not is_loopback(host):
            raise ValueError(f"refusing to serve on {host!r} without a token: anyone who can reach it could "
                             f"drive the policy. Set a token ({TOKEN_ENV} or --token-file), bind 127.0.0.1 and "
                             f"tunnel, or pass --insecure (insecure=True) deliberately")
        self.policy, self.host, self.port = policy, host, port
        self.token, self.max_message_bytes = token or None, max_message_bytes
        self.max_connections, self.max_batch = max_connections, max_batch
        self.n_requests = self.n_errors = 0
        self._n_open = 0
        self._predict_lock = threading.Lock()  # requests run in worker threads; the policy takes one at a time
        self.log_bad = RateLimitedLog(log)
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
                with self._predict_lock:
                    result = self._predict(arrays)
                return encode({"type": "result", "id": header.get("id")}, result)
            raise ProtocolError(f"unknown request type {kind!r}; use ping, schema or predict")
        except ProtocolError as err:
            self.n_errors += 1
            self.log_bad("bad request: %s", err)
            return encode({"type": "error", "message": str(err)})
        except Exception as err:  # a policy failure must not take the server down either
            self.n_errors += 1
            # One line; the traceback only at DEBUG, so a client cannot make the log grow by 15 lines a request.
            self.log_bad("predict_action failed: %s: %s", type(err).__name__, err)
            log.debug("predict_action failed", exc_info=True)
            return encode({"type": "error", "message": f"policy error: {type(err).__name__}: {err}"})

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        meta = ShapeMeta.parse(self.policy.shape_meta)
        check_obs(arrays, meta, self.policy.n_obs_steps)
        batch = next(iter(arrays.values())).shape[0] if arrays else 0
        if batch > self.max_batch:
            raise ProtocolError(f"batch of {batch} exceeds this server's cap of {self.max_batch}; split the request")
        device = getattr(self.policy, "device", "cpu")
        obs = to_policy_obs({key: arrays[key] for key in meta.obs}, device=device)
        with torch.no_grad():
            result = self.policy.predict_action(obs)
        out = {k: result[k].detach().cpu().numpy().astype(np.float32) for k in ("action", "action_pred") if k in result}
        for key, value in out.items():
            if not np.isfinite(value).all():
                raise ProtocolError(f"the policy's {key} holds NaN or inf for this observation (finite but "
                                    f"extreme inputs?); refusing to send it as actions")
        return out

    def _authorize(self, connection, request):
        """None to accept the handshake, else the HTTP response that refuses it (logged in one line)."""
        refusal = self._refusal(request.headers.get_all("Authorization"))
        if refusal is None:
            return None
        status, reason = refusal
        self.log_bad("refused a connection from %s: %d %s", _peer(connection), status, reason)
        return connection.respond(status, reason + "\n")

    def _refusal(self, authorization: list[str]) -> tuple[HTTPStatus, str] | None:
        if self._n_open >= self.max_connections:
            return HTTPStatus.SERVICE_UNAVAILABLE, f"{self.max_connections} connections open, the server's limit"
        if self.token is None:
            return None
        if len(authorization) > 1:
            return HTTPStatus.BAD_REQUEST, f"{len(authorization)} Authorization headers; send exactly one"
        # Header values arrive as latin-1 text: compare bytes, so any value compares without raising.
        given = authorization[0].encode("latin-1", "replace") if authorization else b""
        if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            return HTTPStatus.UNAUTHORIZED, "missing or wrong token (Authorization: Bearer <token>)"
        return None

    async def _connection(self, websocket) -> None:
        closed = require("websockets", extra="serving").ConnectionClosed
        self._n_open += 1  # the event loop is one thread: no lock needed
        try:
            async for message in websocket:
                await websocket.send(await asyncio.to_thread(self.handle, message))
        except closed:
            pass
        finally:
            self._n_open -= 1

    async def serve(self) -> None:
        # websockets imported here, not at the top: `--help` needs only the core installed
        listen = require("websockets.asyncio.server", extra="serving").serve
        self._stop = asyncio.Event()
        # websockets' own logger says INFO per connection: quiet it; refusals are logged (rate-limited) above.
        quiet = logging.getLogger(f"{__name__}.websockets")
        quiet.setLevel(logging.WARNING)
        async with listen(self._connection, self.host, self.port, max_size=self.max_message_bytes,
                         process_request=self._authorize, compression=None, logger=quiet) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("policy server on ws://%s:%d", self.host, self.port)
            self._ready.set()
            await self._stop.wait()

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


def _peer(connection) -> str:
    address = getattr(connection, "remote_address", None)
    return f"{address[0]}:{address[1]}" if address else "?"


def read_token(token_file: str | None) -> str | None:
    """The shared token from `token_file` (first line) or the POLICYLAB_SERVER_TOKEN variable; None if neither.

    A file that group or others may read is refused (ValueError naming the file and the fix): a
    secret every local user can read is no secret.
    """
    if token_file:
        path = Path(token_file)
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ValueError(f"--token-file {path} is readable or writable by group or others (mode "
                             f"{mode & 0o777:04o}); make it private: chmod 600 {path}")
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"--token-file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def main(argv=None) -> None:
    # No abbreviations: `--token <secret>` must fail, not be read as --token-file.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True, help="a policylab checkpoint directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-file", default=None,
                        help=f"file holding the shared token clients must present (or set {TOKEN_ENV})")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without a token (anyone reaching the port can use it)")
    parser.add_argument("--max-message-mb", type=float, default=16.0)
    parser.add_argument("--max-connections", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        token = read_token(args.token_file)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if not token and not args.insecure and not is_loopback(args.host):
        parser.error(f"--host {args.host} needs a token ({TOKEN_ENV} or --token-file) or --insecure")
    from policylab.policies.base import BasePolicy

    policy = BasePolicy.from_checkpoint(args.checkpoint, device=args.device).eval()
    server = PolicyServer(policy, args.host, args.port, token, int(args.max_message_mb * 2**20),
                          max_connections=args.max_connections, max_batch=args.max_batch, insecure=args.insecure)
    asyncio.run(server.serve())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
