import json

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.schema import Schema, SchemaError, SparseFeature
from recsys.models import SpecError, build_member


def _schema(num_dense: int = 0) -> Schema:
    return Schema(
        "toy",
        tuple(SparseFeature(f"C{i}", 50 + i) for i in range(4)),
        tuple(f"I{i}" for i in range(num_dense)),
        splits={"train": 10},
    )


def test_schema_round_trip(tmp_path):
    s = _schema(2)
    s.save(tmp_path)
    assert Schema.load(tmp_path) == s
    assert Schema.load(tmp_path / "meta.json").vocab_sizes == [50, 51, 52, 53]


def test_schema_errors(tmp_path):
    with pytest.raises(SchemaError, match="no such file"):
        Schema.load(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(SchemaError, match="invalid JSON"):
        Schema.load(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format_version": 1, "dataset": "x"}))
    with pytest.raises(SchemaError, match="malformed"):
        Schema.load(tmp_path)


def test_spec_errors():
    s = _schema()
    with pytest.raises(SpecError, match="valid models: .*fnn"):
        build_member("nosuch", s)
    with pytest.raises(SpecError, match="valid keys: .*mlp"):
        build_member("fnn:width=3", s)
    with pytest.raises(SpecError, match="bad value"):
        build_member("fnn:mlp=a-b", s)
    with pytest.raises(SpecError, match="key=value"):
        build_member("fnn:seed", s)
    with pytest.raises(SpecError, match="multiple of 4"):
        build_member("fnn:embedding_dim=11", s)


def test_seed_determines_init():
    s = _schema(3)
    a, b, c = (build_member(f"fnn:mlp=8,seed={k}", s, "m") for k in (1, 1, 2))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_fnn_forward_shapes():
    s = _schema(3)
    m = build_member("fnn:mlp=8-4", s, "m0")
    B = 5
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=s.sparse_names,
        values=torch.randint(0, 50, (B * s.num_sparse,)),
        lengths=torch.ones(B * s.num_sparse, dtype=torch.int32),
    )
    assert m(torch.randn(B, 3), kjt).shape == (B,)
    assert all(t.startswith("m0__") for t in m.sparse_arch.embedding_bag_collection.embedding_bags)
