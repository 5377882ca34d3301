"""Server hardening: no open bind without a token, token never from argv, connection / batch caps,
non-finite actions refused."""

import time

import pytest
import torch

from policylab.serving import server as server_mod
from policylab.serving.client import RemotePolicy, RemotePolicyError
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
