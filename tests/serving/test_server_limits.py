"""Server hardening: no open bind without a token, token never from argv nor from a file others can
read, connection / batch caps, non-finite actions refused, bad handshakes answered 400/401 in one
rate-limited log line each, requests answered one at a time."""

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from websockets.sync.client import connect

from policylab.serving import server as server_mod
from policylab.serving.client import RemotePolicy, RemotePolicyError
from policylab.serving.protocol import decode
from policylab.serving.server import PolicyServer, main, read_token
from tests.real.standin import StandInPolicy


def _obs(batch=1, pose=0.5):
    return {"camera_0": torch.rand(batch, 2, 3, 96, 128), "robot_eef_pose": torch.full((batch, 2, 6), pose)}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "robot-pc"])
def test_non_loopback_bind_needs_a_token_or_insecure(host):
    with pytest.raises(ValueError, match=f"refusing to serve on '{host}' without a token"):
        PolicyServer(StandInPolicy(), host=host)
    PolicyServer(StandInPolicy(), host=host, token="s3cret")
    PolicyServer(StandInPolicy(), host=host, insecure=True)
    for local in ("127.0.0.1", "localhost", "::1"):
        PolicyServer(StandInPolicy(), host=local)


def test_cli_refuses_open_bind_and_token_in_argv(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(server_mod.TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit):  # before any checkpoint is read
        main(["--checkpoint", str(tmp_path / "none"), "--host", "0.0.0.0"])
    assert "needs a token" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "none"), "--token", "visible-in-ps"])
    assert "unrecognized arguments: --token" in capsys.readouterr().err


def test_token_from_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(server_mod.TOKEN_ENV, raising=False)
    assert read_token(None) is None
    monkeypatch.setenv(server_mod.TOKEN_ENV, "from-env")
    assert read_token(None) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "token").chmod(0o600)
    assert read_token(str(tmp_path / "token")) == "from-file"


def test_token_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = server_mod.hmac.compare_digest
    monkeypatch.setattr(server_mod.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    with PolicyServer(StandInPolicy(), port=0, token="s3cret") as srv:
        RemotePolicy(f"ws://127.0.0.1:{srv.port}", token="s3cret").close()
        with pytest.raises(RemotePolicyError, match="401"):
            RemotePolicy(f"ws://127.0.0.1:{srv.port}", token="s3creT")
    assert calls
    assert all(b == b"Bearer s3cret" for _, b in calls)


def test_connection_limit():
    with PolicyServer(StandInPolicy(), port=0, max_connections=2) as srv:
        url = f"ws://127.0.0.1:{srv.port}"
        first, second = RemotePolicy(url), RemotePolicy(url)
        with pytest.raises(RemotePolicyError, match="503"):
            RemotePolicy(url)
        first.close()
        for _ in range(50):  # the server notices the close asynchronously
            try:
                third = RemotePolicy(url)
                break
            except RemotePolicyError:
                time.sleep(0.05)
        third.predict_action(_obs())
        second.close()
        third.close()


def test_batch_cap():
    with PolicyServer(StandInPolicy(), port=0, max_batch=2) as srv:
        remote = RemotePolicy(f"ws://127.0.0.1:{srv.port}")
        assert remote.predict_action(_obs(batch=2))["action"].shape == (2, 4, 6)
        with pytest.raises(RemotePolicyError, match="batch of 3 exceeds this server's cap of 2"):
            remote.predict_action(_obs(batch=3))
        remote.close()


class Overflowing(StandInPolicy):
    """A network whose activations overflow float32 for extreme (but finite) inputs."""

    def predict_action(self, obs):
        out = super().predict_action(obs)
        return {k: v * 10.0 for k, v in out.items()}


def test_non_finite_actions_are_an_error_reply():
    with PolicyServer(Overflowing(), port=0) as srv:
        remote = RemotePolicy(f"ws://127.0.0.1:{srv.port}")
        with pytest.raises(RemotePolicyError, match="NaN or inf"):
            remote.predict_action(_obs(pose=3e38))
        assert torch.isfinite(remote.predict_action(_obs(pose=0.5))["action"]).all()  # still serving
        remote.close()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_token_file_others_can_read_is_refused(tmp_path, mode, capsys):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(mode)
    with pytest.raises(ValueError, match=f"{token}.*mode {mode:04o}.*chmod 600 {token}"):
        read_token(str(token))
    with pytest.raises(SystemExit):  # the CLI: an argparse error, before any checkpoint is read
        main(["--checkpoint", str(tmp_path / "none"), "--token-file", str(token)])
    assert f"chmod 600 {token}" in capsys.readouterr().err
    token.chmod(0o600)
    assert read_token(str(token)) == "s3cret"


def _handshake(port: int, *header_lines: bytes) -> bytes:
    """The status line the server answers a raw WebSocket upgrade with `header_lines` added."""
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_duplicate_or_malformed_authorization_is_400_or_401_in_one_log_line(caplog):
    caplog.set_level(logging.DEBUG, logger="policylab.serving.server")
    with PolicyServer(StandInPolicy(), port=0, token="s3cret") as srv:
        cases = {(b"Authorization: Bearer s3cret", b"Authorization: Bearer s3cret"): b"400",
                 (b"Authorization: Bearer wrong", b"Authorization: Bearer s3cret"): b"400",
                 (b"Authorization: Bearer \xff\xfe\x80",): b"401",
                 (b"Authorization: s3cret",): b"401",
                 (b"Authorization: Bearer",): b"401",
                 (): b"401"}
        for lines, status in cases.items():
            assert _handshake(srv.port, *lines).split(b" ")[1] == status, lines
        assert _handshake(srv.port, b"Authorization: Bearer s3cret").split(b" ")[1] == b"101"
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refusals) == len(cases)
    assert all(r.exc_info is None for r in caplog.records), "no tracebacks in the log"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_bad_requests_log_one_line_each_and_at_most_a_burst_a_window(caplog):
    caplog.set_level(logging.DEBUG, logger="policylab.serving.server")
    with PolicyServer(StandInPolicy(), port=0) as srv, connect(f"ws://127.0.0.1:{srv.port}") as ws:
        for _ in range(server_mod.LOG_BURST + 30):
            ws.send(b"not a message")
            assert decode(ws.recv(timeout=5))[0]["type"] == "error"
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == server_mod.LOG_BURST and all("bad request" in r.getMessage() for r in lines)
    assert all(r.exc_info is None for r in caplog.records)


def test_rate_limited_log_counts_what_it_left_out(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(server_mod.time, "monotonic", lambda: now[0])
    logger = logging.getLogger("test.rate_limited")
    say = server_mod.RateLimitedLog(logger, burst=3, window=10.0)
    with caplog.at_level(logging.WARNING, logger="test.rate_limited"):
        for i in range(8):
            say("bad %d", i)
        now[0] += 10.0
        say("bad %d", 8)
    assert [r.getMessage() for r in caplog.records] == [
        "bad 0", "bad 1", "bad 2", "5 further bad requests in the last 10 s were not logged", "bad 8"]


class Slow(StandInPolicy):
    """Counts how many predict_action calls run at once."""

    def __init__(self):
        super().__init__(delay=0.05)
        self.active = self.most_active = 0
        self.lock = threading.Lock()

    def predict_action(self, obs):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            return super().predict_action(obs)
        finally:
            with self.lock:
                self.active -= 1


def test_concurrent_requests_are_answered_one_at_a_time():
    policy = Slow()
    with PolicyServer(policy, port=0) as srv:
        url = f"ws://127.0.0.1:{srv.port}"

        def client(pose: float) -> list[torch.Tensor]:
            remote = RemotePolicy(url)
            try:
                return [remote.predict_action(_obs(pose=pose))["action"] for _ in range(3)]
            finally:
                remote.close()

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(client, [0.1, 0.2, 0.3, 0.4]))
    assert policy.calls == 12 and policy.most_active == 1
    for pose, actions in zip([0.1, 0.2, 0.3, 0.4], results):  # each client got its own answers
        for action in actions:
            assert action[0, 0, 1].item() == pytest.approx(pose)
