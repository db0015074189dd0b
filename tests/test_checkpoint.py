"""Checkpoints: rl-agents' format, atomic and byte-stable writes, and every bad-file case."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from egolens import checkpoint
from egolens.checkpoint import CheckpointError
from egolens.model import EgoAttentionNetwork


def saved_network(tmp_path, heads=2):
    torch.manual_seed(0)
    net = EgoAttentionNetwork(heads=heads)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4)
    path = tmp_path / "agent.pt"
    checkpoint.save(path, checkpoint.checkpoint_dict(net, optimizer, {"seed": 0, "steps": 10, "config": {"a": [1.0]}}))
    return net, path


def test_round_trip_restores_weights_optimizer_and_plain_metadata(tmp_path):
    net, path = saved_network(tmp_path)
    other = EgoAttentionNetwork()
    ckpt = checkpoint.load_network(path, other)
    for k, v in net.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    assert ckpt["egolens"] == {"seed": 0, "steps": 10, "config": {"a": [1.0]}}
    assert set(ckpt) == {"state_dict", "optimizer", "egolens"}
    torch.optim.Adam(other.parameters()).load_state_dict(ckpt["optimizer"])


def test_saving_the_same_content_twice_gives_the_same_bytes_and_leaves_no_temp_file(tmp_path):
    _, path = saved_network(tmp_path)
    first = path.read_bytes()
    loaded = checkpoint.load(path)
    checkpoint.save(path, loaded)          # strings now come from a file, not from code
    assert path.read_bytes() == first
    assert os.listdir(tmp_path) == ["agent.pt"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file there"):
        checkpoint.load(tmp_path / "missing.pt")


def test_a_truncated_file_is_reported_as_corrupt(tmp_path):
    _, path = saved_network(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_random_bytes_are_refused_with_a_checkpoint_error(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.pt"
    for _ in range(300):                    # garbage trips many different parser errors
        path.write_bytes(rng.bytes(512))
        with pytest.raises(CheckpointError, match="truncated or corrupt|refused"):
            checkpoint.load(path)


class RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "optimizer": {}, "payload": RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(path)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"                     # a bare (non-zip) pickle too
    raw.write_bytes(pickle.dumps(RunsCode(str(marker))))
    with pytest.raises(CheckpointError):
        checkpoint.load(raw)
    assert not marker.exists()


def test_wrong_keys_are_named(tmp_path):
    net, _ = saved_network(tmp_path)
    sd = net.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["attention_layer.key_all.weight"]
    torch.save({"state_dict": sd, "optimizer": {}}, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['attention_layer.key_all.weight'\].*"
                                              r"unexpected keys \['extra.weight'\]"):
        checkpoint.load_network(tmp_path / "keys.pt", EgoAttentionNetwork())


def test_wrong_shapes_are_named(tmp_path):
    small = EgoAttentionNetwork(in_features=5)
    torch.save({"state_dict": small.state_dict(), "optimizer": {}}, tmp_path / "shapes.pt")
    expected = r"ego_embedding.layers.0.weight: \(64, 5\) in .*\(64, 7\) in the network"
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.load_network(tmp_path / "shapes.pt", EgoAttentionNetwork())


def test_a_file_without_state_dict_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected a dict with 'state_dict'"):
        checkpoint.load(tmp_path / "other.pt")


def test_float_weights_are_refused_naming_the_file(tmp_path):
    net, path = saved_network(tmp_path)
    state = {k: 0.5 for k in net.state_dict()}
    bad = tmp_path / "floats.pt"
    checkpoint.save(bad, {"state_dict": state, "optimizer": {}})
    with pytest.raises(CheckpointError, match=r"floats\.pt: weights that are not tensors"):
        checkpoint.load_network(bad, EgoAttentionNetwork())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file_and_the_key(tmp_path, value):
    net, _ = saved_network(tmp_path)
    state = net.state_dict()
    state["output_layer.predict.bias"][1] = value
    bad = tmp_path / "nan.pt"
    checkpoint.save(bad, {"state_dict": state, "optimizer": {}})
    with pytest.raises(CheckpointError, match=r"nan\.pt: non-finite .* \['output_layer.predict.bias'\]"):
        checkpoint.load_network(bad, EgoAttentionNetwork())
