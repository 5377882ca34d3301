"""PolicyServer + RemotePolicy over a real WebSocket on 127.0.0.1, including a malformed-message fuzz."""

import json
import struct

import numpy as np
import pytest
import torch
import websockets
from websockets.sync.client import connect

from policylab.serving.client import RemotePolicy, RemotePolicyError
from policylab.serving.protocol import ProtocolError, decode, encode
from policylab.serving.server import PolicyServer
from tests.real.standin import StandInPolicy


def _obs(batch=1):
    gen = torch.Generator().manual_seed(0)
    return {"camera_0": torch.rand(batch, 2, 3, 96, 128, generator=gen),
            "robot_eef_pose": torch.rand(batch, 2, 6, generator=gen)}


@pytest.fixture
def server():
    with PolicyServer(StandInPolicy(), port=0, max_message_bytes=2**20) as srv:
        yield srv


def test_round_trip_matches_the_local_policy(server):
    remote = RemotePolicy(f"ws://127.0.0.1:{server.port}")
    assert remote.n_obs_steps == 2
    assert remote.n_action_steps == 4
    assert remote.shape_meta["obs"]["camera_0"]["shape"] == [3, 96, 128]
    obs = _obs(batch=3)
    got = remote.predict_action(obs)
    want = StandInPolicy().predict_action(obs)
    for key in ("action", "action_pred"):
        torch.testing.assert_close(got[key], want[key])
    remote.close()


def test_server_binds_localhost_by_default():
    assert PolicyServer(StandInPolicy()).host == "127.0.0.1"


def test_token_is_required_when_set():
    with PolicyServer(StandInPolicy(), port=0, token="s3cret") as srv:
        url = f"ws://127.0.0.1:{srv.port}"
        with pytest.raises(RemotePolicyError, match="401"):
            RemotePolicy(url)
        with pytest.raises(RemotePolicyError, match="401"):
            RemotePolicy(url, token="wrong")
        RemotePolicy(url, token="s3cret").close()


def test_protocol_round_trip_and_validation():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([True, False])}
    header, out = decode(encode({"type": "x", "id": 3}, arrays))
    assert header["type"] == "x"
    assert header["id"] == 3
    np.testing.assert_array_equal(out["a"], arrays["a"])
    np.testing.assert_array_equal(out["b"], arrays["b"])
    with pytest.raises(ProtocolError, match="dtype"):
        encode({"type": "x"}, {"o": np.array([object()])})
    with pytest.raises(ProtocolError, match="magic"):
        decode(b"NOPE" + bytes(8))


def _mutations(valid: bytes, rng: np.random.Generator):
    """Malformed messages: garbage, truncations, bit flips, lying headers, schema violations."""
    head_len = struct.unpack_from("<I", valid, 4)[0]
    header = json.loads(valid[8:8 + head_len])
    payload = valid[8 + head_len:]

    def with_header(h, body=payload):
        raw = json.dumps(h).encode()
        return b"PLB1" + struct.pack("<I", len(raw)) + raw + body

    yield b""
    yield "text frame"
    yield b"PLB1"
    yield b"PLB1" + struct.pack("<I", 2**31) + b"{}"
    yield b"PLB1" + struct.pack("<I", 5) + b"\xff\xfe\x00{]"
    yield with_header([1, 2])
    yield with_header({"type": 7})
    yield with_header({"type": "launch_missiles"})
    for n in (9, head_len // 2, len(valid) // 2, len(valid) - 1):
        yield valid[:n]
    for field, value in [("dtype", "object"), ("dtype", "float128"), ("shape", [-1, 2]), ("shape", "big"),
                         ("shape", [1] * 20), ("offset", -5), ("offset", 2**40), ("nbytes", 3),
                         ("key", None), ("shape", [1, 2, 3, 96, 128])]:
        bad = json.loads(json.dumps(header))
        bad["arrays"][0][field] = value
        yield with_header(bad)
    bad = json.loads(json.dumps(header))
    bad["arrays"] = bad["arrays"][:1]  # a declared key missing
    yield with_header(bad)
    yield with_header({**header, "arrays": "nope"})
    nan_payload = bytearray(payload)
    nan_payload[-4:] = struct.pack("<f", float("nan"))
    yield with_header(header, bytes(nan_payload))
    for _ in range(40):
        flipped = bytearray(valid)
        for pos in rng.integers(0, len(valid), size=rng.integers(1, 8)):
            flipped[pos] = rng.integers(0, 256)
        yield bytes(flipped)
        yield rng.bytes(int(rng.integers(1, 300)))


def test_server_survives_a_fuzzed_stream_of_malformed_messages(server):
    obs = {k: v.numpy() for k, v in _obs().items()}
    valid = encode({"type": "predict", "id": 1}, obs)
    rng = np.random.default_rng(0)
    n_errors = 0
    with connect(f"ws://127.0.0.1:{server.port}", max_size=2**22) as ws:
        for message in _mutations(valid, rng):
            ws.send(message)
            reply, _ = decode(ws.recv(timeout=5))
            assert reply["type"] in ("error", "result", "pong", "schema")
            n_errors += reply["type"] == "error"
        ws.send(valid)
        reply, arrays = decode(ws.recv(timeout=5))
        assert reply["type"] == "result"
        assert arrays["action"].shape == (1, 4, 6)
    assert n_errors >= 30
    # a message over the size cap closes that connection only; the server keeps serving
    with connect(f"ws://127.0.0.1:{server.port}", max_size=2**22) as ws:
        ws.send(b"PLB1" + bytes(2**20 + 10))
        with pytest.raises(websockets.ConnectionClosed):
            ws.recv(timeout=5)
    remote = RemotePolicy(f"ws://127.0.0.1:{server.port}")
    assert remote.predict_action(_obs())["action"].shape == (1, 4, 6)
    remote.close()


def test_policy_errors_become_error_replies(server):
    remote = RemotePolicy(f"ws://127.0.0.1:{server.port}")
    with pytest.raises(RemotePolicyError, match="must be"):
        remote.predict_action({"camera_0": torch.rand(1, 2, 3, 32, 32), "robot_eef_pose": torch.rand(1, 2, 6)})
    assert remote.predict_action(_obs())["action"].shape == (1, 4, 6)
    remote.close()
