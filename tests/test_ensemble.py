"""Ensemble groups: merging, the group loss, GroupTrain, group validation."""
from __future__ import annotations

import math

import pytest
import torch

from recsys.ensemble import (
    EnsembleGroup,
    GroupTrain,
    build_group,
    member_names,
    merge_logits,
    validate_groups,
)
from recsys.models import build_member
from tests.toy_data import toy_batches, toy_schema

SPECS = ["fnn:mlp=16-8,seed=1", "fnn:mlp=16,seed=2", "fnn:mlp=8,seed=3"]


@pytest.fixture(scope="module")
def schema():
    return toy_schema(num_fields=4, vocab=20, num_dense=2)


@pytest.fixture(scope="module")
def batch(schema):
    return next(toy_batches(schema, 64, 64, seed=5))


def test_member_names_unique_identifiers():
    names = member_names(["dcnv2:seed=1", "dcnv2:seed=2", "Wukong", "rankmixer:num_layers=2"])
    assert names == ["m0_dcnv2", "m1_dcnv2", "m2_wukong", "m3_rankmixer"]
    assert all(n.isidentifier() for n in names)
    with pytest.raises(ValueError, match="empty spec"):
        member_names(["fnn", ""])


def test_merge_is_exact_mean():
    x = torch.randn(50, 3)
    expected = (x[:, 0] + x[:, 1] + x[:, 2]) / 3
    torch.testing.assert_close(merge_logits(x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(merge_logits(x[:, :1]), x[:, 0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        merge_logits(torch.randn(5))


def test_group_forward_is_member_logits_and_merge_is_their_mean(schema, batch):
    names = member_names(SPECS)
    group = build_group(SPECS, names, [0, 1, 2], schema)
    group.eval()
    with torch.no_grad():
        logits = group(batch.dense_features, batch.sparse_features)
        alone = [build_member(s, schema, n) for s, n in zip(SPECS, names)]
        each = [m.eval()(batch.dense_features, batch.sparse_features) for m in alone]
    assert logits.shape == (64, 3)
    for j in range(3):  # same seed -> same member, whichever module holds it
        torch.testing.assert_close(logits[:, j], each[j], rtol=0, atol=0)
    torch.testing.assert_close(merge_logits(logits), sum(each) / 3, rtol=0, atol=1e-6)


def test_group_loss_is_bce_of_mean_by_hand(schema, batch):
    names = member_names(SPECS)
    group = build_group(SPECS, names, [0, 2], schema)
    logits = group(batch.dense_features, batch.sparse_features)
    loss = group.loss(logits, batch.labels)
    z = ((logits[:, 0] + logits[:, 1]) / 2).double()
    y = batch.labels.double()
    p = 1 / (1 + torch.exp(-z))
    by_hand = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert math.isclose(loss.item(), by_hand.item(), rel_tol=1e-5)
    # The loss is of the MEAN logit, not the mean of per-member losses.
    per_member = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, None].expand_as(logits))
    assert not math.isclose(float(loss), float(per_member), rel_tol=1e-4)
    loss.backward()
    for n, p_ in group.named_parameters():
        assert p_.grad is not None, n


class _AuxMember(torch.nn.Module):
    """A stand-in member with an auxiliary loss, as D-MoE has."""

    def __init__(self, name: str, aux: float) -> None:
        super().__init__()
        self.name = name
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.aux = aux

    def forward(self, dense, features):
        return dense[:, 0] * self.w

    def auxiliary_loss(self):
        return torch.tensor(self.aux)


def test_group_loss_adds_auxiliary_losses():
    group = EnsembleGroup([_AuxMember("a", 0.25), _AuxMember("b", 0.5)])  # type: ignore[list-item]
    dense = torch.randn(10, 1)
    y = (torch.rand(10) < 0.5).float()
    logits = group(dense, None)  # type: ignore[arg-type]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.mean(1), y)
    assert math.isclose(float(group.loss(logits, y)), float(bce) + 0.75, rel_tol=1e-6)


def test_group_train_outputs(schema, batch):
    names = member_names(SPECS)
    train = GroupTrain(build_group(SPECS, names, [1, 2], schema))
    loss, (loss_d, logits, labels) = train(batch)
    assert loss.shape == () and loss.requires_grad
    assert not loss_d.requires_grad and float(loss_d) == float(loss)
    assert logits.shape == (64, 2) and not logits.requires_grad
    assert labels is batch.labels
    assert list(train.group.names) == ["m1_fnn", "m2_fnn"]
    assert any(k.startswith("group.members.m1_fnn.") for k in train.state_dict())


def test_group_train_is_fx_traceable(schema, batch):
    """TrainPipelineSparseDist FX-traces the model: the loss must trace (merge_logits' shape
    check is a Python ``if``; ``mean_logit_bce`` is an fx.wrap leaf) and give the same value."""
    import torchrec.fx

    from recsys.ensemble import mean_logit_bce

    names = member_names(SPECS)
    train = GroupTrain(build_group(SPECS, names, [0, 1], schema))
    gm = torchrec.fx.symbolic_trace(train)
    assert any(n.op == "call_function" and n.target is mean_logit_bce for n in gm.graph.nodes)
    loss, (loss_d, logits, _) = train(batch)
    traced, (traced_d, traced_logits, _) = gm(batch)
    assert float(loss_d) == pytest.approx(float(train.group.loss(logits, batch.labels)), rel=1e-6)
    torch.testing.assert_close(traced, loss, rtol=0, atol=0)
    torch.testing.assert_close(traced_d, loss_d, rtol=0, atol=0)
    torch.testing.assert_close(traced_logits, logits, rtol=0, atol=0)


def test_duplicate_member_names_rejected(schema):
    m = build_member("fnn:mlp=8", schema, "same")
    with pytest.raises(ValueError, match="duplicate"):
        EnsembleGroup([m, build_member("fnn:mlp=8", schema, "same")])


def test_validate_groups_ok():
    assert validate_groups(3, None) == [[0], [1], [2]]
    assert validate_groups(4, [[0, 1], [2, 3]]) == [[0, 1], [2, 3]]
    assert validate_groups(3, [[2, 0], [1]]) == [[2, 0], [1]]
    assert validate_groups(2, [[0, 1]]) == [[0, 1]]


@pytest.mark.parametrize(
    "groups, match",
    [
        ([[0, 1], [1, 2]], r"overlap: member 1 is in groups 0 and 1"),
        ([[0, 0], [1, 2]], r"overlap: member 0 is in group 0 twice"),
        ([[0], [2]], r"miss member\(s\) \[1\]"),
        ([[0, 1], [2, 3]], r"index 3 is out of range"),
        ([[0, -1], [1, 2]], r"index -1 is out of range"),
        ([[0, 1, 2], []], r"groups\[1\] is empty"),
        ([[0, "1", 2]], r"not an integer"),
        ([[0, True, 2]], r"not an integer"),
        ("0,1,2", r"expected a list"),
    ],
)
def test_validate_groups_errors(groups, match):
    with pytest.raises(ValueError, match=match) as e:
        validate_groups(3, groups)
    assert "\n" not in str(e.value)


def test_stack_member_logits_places_columns_and_checks_coverage():
    from recsys.ensemble import stack_member_logits

    a = torch.arange(10.0).reshape(5, 2)
    b = torch.full((5, 1), -1.0)
    m = stack_member_logits([a, b], [[0, 2], [1]], 3)
    assert torch.equal(m[:, 0], a[:, 0]) and torch.equal(m[:, 2], a[:, 1]) and torch.equal(m[:, 1], b[:, 0])
    with pytest.raises(ValueError, match="placed"):
        stack_member_logits([a, b], [[0, 1], [1]], 3)
    with pytest.raises(ValueError, match="shape"):
        stack_member_logits([a, torch.zeros(4, 1)], [[0, 2], [1]], 3)
