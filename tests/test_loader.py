"""Loader: KJT contents, per-rank coverage, equal batch counts, shuffling, resume, layouts, errors.

Every fixture stores the row's index in dense column 0 (exact in float32), so a
test can tell which source rows a batch holds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.loader import (
    LoaderError,
    NpySplit,
    make_loader,
    plan_batches,
    rank_row_range,
)
from recsys.data.schema import Schema, SchemaError, SparseFeature
from recsys.data.torchrec_layout import open_torchrec_criteo

VOCAB = [11, 13, 17, 19]


def _arrays(n: int, num_dense: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, num_dense)).astype(np.float32)
    if num_dense:
        dense[:, 0] = np.arange(n)  # row id
    sparse = np.stack([rng.integers(0, v, n) for v in VOCAB], axis=1).astype(np.int32)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    return dense, sparse, labels


def _write(
    d: Path,
    splits: dict[str, int],
    num_dense: int = 3,
    parts: dict[str, list[int]] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Writes our npy layout; returns the arrays per split."""
    schema = Schema(
        "toy",
        tuple(SparseFeature(f"C{i}", v) for i, v in enumerate(VOCAB)),
        tuple(f"I{i}" for i in range(num_dense)),
        splits=dict(splits),
        preprocessing={"parts": parts} if parts else {},
    )
    schema.save(d)
    out = {}
    for k, (split, n) in enumerate(splits.items()):
        arrs = _arrays(n, num_dense, seed=k)
        out[split] = arrs
        if parts and split in parts:
            bounds = np.cumsum([0] + parts[split])
            for p in range(len(parts[split])):
                for kind, a in zip(("dense", "sparse", "labels"), arrs):
                    np.save(d / f"{split}_{kind}.{p:05d}.npy", a[bounds[p] : bounds[p + 1]])
        else:
            for kind, a in zip(("dense", "sparse", "labels"), arrs):
                np.save(d / f"{split}_{kind}.npy", a)
    return out


def _row_ids(batch: Batch) -> np.ndarray:
    return batch.dense_features[:, 0].numpy().astype(np.int64)


def _check_batch(batch: Batch, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> None:
    """The batch equals the source rows named by its row ids."""
    rows = _row_ids(batch)
    B = len(rows)
    assert isinstance(batch.sparse_features, KeyedJaggedTensor)
    kjt = batch.sparse_features
    assert kjt.keys() == [f"C{i}" for i in range(len(VOCAB))]
    assert kjt.lengths().tolist() == [1] * (B * len(VOCAB))
    assert kjt.stride() == B
    for j, key in enumerate(kjt.keys()):
        np.testing.assert_array_equal(kjt[key].values().numpy(), sparse[rows, j])
    assert batch.dense_features.dtype == torch.float32 and batch.labels.dtype == torch.float32
    np.testing.assert_array_equal(batch.dense_features.numpy(), dense[rows])
    np.testing.assert_array_equal(batch.labels.numpy(), labels[rows])


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 7, 100, 101])
def test_rank_row_range_partitions(n, world_size):
    ranges = [rank_row_range(n, r, world_size) for r in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a0, b0), (a1, _) in zip(ranges, ranges[1:]):
        assert b0 == a1  # contiguous, no gap or overlap
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_plan_batches_modes():
    # 10 rows, 3 ranks: sizes 4, 3, 3; q = 3
    plain = [plan_batches(10, 2, r, 3) for r in range(3)]
    assert [p.num_batches for p in plain] == [2, 2, 2]
    assert plain[0].bounds(1) == (2, 4)
    dl = [plan_batches(10, 2, r, 3, drop_last=True) for r in range(3)]
    assert [p.num_batches for p in dl] == [2, 1, 1]
    eq_dl = [plan_batches(10, 2, r, 3, drop_last=True, equal_batches=True) for r in range(3)]
    assert [p.num_batches for p in eq_dl] == [1, 1, 1] and all(p.bounds(0) == (0, 2) for p in eq_dl)
    # 7 rows, 2 ranks, B=3: sizes 4, 3; plain gives 2 vs 1 batches, equal gives 1 and 1
    assert [plan_batches(7, 3, r, 2).num_batches for r in range(2)] == [2, 1]
    eq = [plan_batches(7, 3, r, 2, equal_batches=True) for r in range(2)]
    assert [p.num_batches for p in eq] == [1, 1]
    assert eq[0].bounds(0) == (0, 4) and eq[1].bounds(0) == (0, 3)  # last batch takes the rest (B + 1)
    with pytest.raises(LoaderError, match="at least world_size"):
        plan_batches(1, 4, 0, 2, equal_batches=True)
    with pytest.raises(LoaderError, match="batch_size"):
        plan_batches(10, 0)
    with pytest.raises(LoaderError, match="bad rank"):
        rank_row_range(10, 2, 2)


# ----------------------------------------------------------------------------- contents and coverage


def test_batches_equal_source_rows(tmp_path):
    arrs = _write(tmp_path, {"train": 103})["train"]
    loader = make_loader(tmp_path, "train", 16)
    batches = list(loader)
    assert len(batches) == len(loader) == 7
    assert [len(b.labels) for b in batches] == [16] * 6 + [7]
    for b in batches:
        _check_batch(b, *arrs)
    np.testing.assert_array_equal(np.concatenate([_row_ids(b) for b in batches]), np.arange(103))
    assert isinstance(loader.split._parts[0].sparse, np.memmap)  # memory-mapped, not loaded


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n,batch_size", [(1000, 64), (1001, 100), (37, 5), (5, 8), (1537, 4096)])
def test_two_ranks_cover_every_row_once(tmp_path, n, batch_size, shuffle):
    arrs = _write(tmp_path, {"val": n})["val"]
    for equal in (False, True):
        seen = []
        lens = []
        for rank in range(2):
            loader = make_loader(
                tmp_path, "val", batch_size, rank=rank, world_size=2, shuffle=shuffle, seed=3,
                equal_batches=equal, shuffle_window=50,
            )
            batches = list(loader)
            assert len(batches) == len(loader)
            lens.append(len(batches))
            for b in batches:
                _check_batch(b, *arrs)
            ids = np.concatenate([_row_ids(b) for b in batches])
            lo, hi = rank_row_range(n, rank, 2)
            assert ids.min() >= lo and ids.max() < hi  # contiguous range per rank
            seen.append(ids)
        all_ids = np.concatenate(seen)
        assert len(all_ids) == n
        np.testing.assert_array_equal(np.sort(all_ids), np.arange(n))
        if equal:
            assert lens[0] == lens[1]


@pytest.mark.parametrize("n,world_size,batch_size", [(1000, 2, 64), (1003, 3, 10), (130, 4, 32)])
def test_equal_batches_drop_last_for_training(tmp_path, n, world_size, batch_size):
    _write(tmp_path, {"train": n})
    counts, seen = [], []
    for rank in range(world_size):
        loader = make_loader(
            tmp_path, "train", batch_size, rank=rank, world_size=world_size,
            shuffle=True, equal_batches=True, drop_last=True,
        )
        batches = list(loader)
        counts.append(len(batches))
        assert all(len(b.labels) == batch_size for b in batches)
        seen.extend(_row_ids(b) for b in batches)
    assert len(set(counts)) == 1 and counts[0] == (n // world_size) // batch_size
    ids = np.concatenate(seen)
    assert len(np.unique(ids)) == len(ids)  # no row twice


@pytest.mark.parametrize("drop_last", [True, False])
def test_global_batch_slices_partition_it_and_do_not_depend_on_world_size(tmp_path, drop_last):
    """Training mode: batch i's rows are the same global batch for every G, and the G
    ranks' slices (rank order) are exactly its consecutive parts."""
    arrs = _write(tmp_path, {"train": 1000})["train"]
    B = 48  # 1000 = 20 x 48 + 40
    kw = dict(shuffle=True, seed=5, shuffle_window=300, global_batch=True, drop_last=drop_last)
    one = make_loader(tmp_path, "train", B, **kw)
    one.set_epoch(1)
    ref = [_row_ids(b) for b in one]
    assert len(ref) == (20 if drop_last else 21)
    assert all(len(r) == B for r in ref[:20])
    flat = np.concatenate(ref)
    assert len(np.unique(flat)) == len(flat) and not np.array_equal(flat[:B], np.arange(B))  # shuffled
    # The same order as a plain 1-rank loader (global batches on G = 1 change nothing).
    plain = make_loader(tmp_path, "train", B, shuffle=True, seed=5, shuffle_window=300, drop_last=drop_last)
    assert all(np.array_equal(x, y) for x, y in zip(ref, _epoch_ids(plain, 1)))
    for G in (2, 3, 4):
        loaders = [make_loader(tmp_path, "train", B, rank=r, world_size=G, **kw) for r in range(G)]
        per_rank = [_epoch_ids(ld, 1) for ld in loaders]
        assert {len(ld) for ld in loaders} == {len(ref)}  # same step count on every rank
        for i, rows in enumerate(ref):
            parts = [per_rank[r][i] for r in range(G)]
            if i < 20:
                assert all(len(p) == B // G for p in parts)
            np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.sort(rows))
            # rank r holds the r-th consecutive slice of the global batch order
            for r in range(G):
                np.testing.assert_array_equal(parts[r], loaders[r].batch_rows(1, i))
        for b in next(iter(loaders[G - 1])), :
            _check_batch(b, *arrs)
    # The slices depend on the rank: a 2-rank group's halves differ.
    h = [make_loader(tmp_path, "train", B, rank=r, world_size=2, **kw).batch_rows(0, 0) for r in (0, 1)]
    assert not np.array_equal(h[0], h[1])


def test_global_batch_resume_and_errors(tmp_path):
    _write(tmp_path, {"train": 400})
    kw = dict(rank=1, world_size=2, shuffle=True, seed=2, global_batch=True, drop_last=True, prefetch=2)
    full = _epoch_ids(make_loader(tmp_path, "train", 32, **kw), 0)
    first = make_loader(tmp_path, "train", 32, **kw)
    it = iter(first)
    got = [_row_ids(next(it)) for _ in range(4)]
    sd = json.loads(json.dumps(first.state_dict()))
    del it
    resumed = make_loader(tmp_path, "train", 32, **kw)
    resumed.load_state_dict(sd)
    resumed.set_epoch(0)
    got += [_row_ids(b) for b in resumed]
    assert len(got) == len(full) == 400 // 32
    assert all(np.array_equal(x, y) for x, y in zip(got, full))
    # Global batches: the order does not depend on rank/world size, so the state of
    # rank 1 of 2 resumes a 1-rank or a 4-rank group at the same global step.
    one_kw = {**kw, "rank": 0, "world_size": 1}
    ref = _epoch_ids(make_loader(tmp_path, "train", 32, **one_kw), 0)
    on_one = make_loader(tmp_path, "train", 32, **one_kw)
    on_one.load_state_dict(sd)
    rest = [_row_ids(b) for b in on_one]
    assert len(rest) == len(ref) - 4 and all(np.array_equal(x, y) for x, y in zip(rest, ref[4:]))
    on_four = make_loader(tmp_path, "train", 32, **{**kw, "rank": 3, "world_size": 4})
    on_four.load_state_dict(sd)
    assert np.array_equal(_row_ids(next(iter(on_four))), on_four.batch_rows(0, 4))
    assert set(on_four.batch_rows(0, 4)) <= set(ref[4])
    with pytest.raises(LoaderError, match="seed=2"):  # the rest is still checked
        make_loader(tmp_path, "train", 32, **{**one_kw, "seed": 3}).load_state_dict(sd)
    with pytest.raises(LoaderError, match="batch_size=32"):
        make_loader(tmp_path, "train", 64, **one_kw).load_state_dict(sd)
    with pytest.raises(LoaderError, match="global_batch"):  # a contiguous-range state does not fit
        make_loader(tmp_path, "train", 32, **{**kw, "global_batch": False}).load_state_dict(sd)
    with pytest.raises(LoaderError, match=r"batch_size=30 .*multiple of world_size=4") as e:
        make_loader(tmp_path, "train", 30, rank=0, world_size=4, global_batch=True)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- shuffling and resume


def _epoch_ids(loader, epoch: int) -> list[np.ndarray]:
    loader.set_epoch(epoch)
    return [_row_ids(b) for b in loader]


def test_seeded_shuffle(tmp_path):
    _write(tmp_path, {"train": 500})
    mk = lambda seed, window: make_loader(tmp_path, "train", 32, shuffle=True, seed=seed, shuffle_window=window)  # noqa: E731
    for window in (1 << 22, 37):  # one window (full permutation) and many windows
        a0, a0_again, a1 = _epoch_ids(mk(0, window), 0), _epoch_ids(mk(0, window), 0), _epoch_ids(mk(0, window), 1)
        b0 = _epoch_ids(mk(1, window), 0)
        assert all(np.array_equal(x, y) for x, y in zip(a0, a0_again))
        flat = np.concatenate(a0)
        assert not np.array_equal(flat, np.concatenate(a1))
        assert not np.array_equal(flat, np.concatenate(b0))
        assert not np.array_equal(flat, np.arange(500))
        np.testing.assert_array_equal(np.sort(flat), np.arange(500))  # a permutation
        assert all(np.all(np.diff(x) > 0) for x in a0)  # sorted within a batch for ordered reads
    # epoch changes the order also when set_epoch is called on the same loader
    loader = mk(0, 1 << 22)
    assert not np.array_equal(np.concatenate(_epoch_ids(loader, 0)), np.concatenate(_epoch_ids(loader, 1)))


@pytest.mark.parametrize("prefetch", [0, 3])
@pytest.mark.parametrize("stop_after", [0, 1, 5, 9])
def test_state_dict_resumes_at_next_batch(tmp_path, prefetch, stop_after):
    arrs = _write(tmp_path, {"train": 300})["train"]
    kw = dict(rank=1, world_size=2, shuffle=True, seed=7, prefetch=prefetch, shuffle_window=40)
    full = _epoch_ids(make_loader(tmp_path, "train", 16, **kw), 2)  # uninterrupted epoch 2

    first = make_loader(tmp_path, "train", 16, **kw)
    first.set_epoch(2)
    got = []
    it = iter(first)
    for _ in range(stop_after):
        got.append(_row_ids(next(it)))
    sd = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert sd["epoch"] == 2 and sd["batches_consumed"] == stop_after
    del it

    resumed = make_loader(tmp_path, "train", 16, **kw)
    resumed.load_state_dict(sd)
    resumed.set_epoch(2)  # a training loop calls this again; it keeps the restored position
    rest = list(resumed)
    for b in rest:
        _check_batch(b, *arrs)
    got += [_row_ids(b) for b in rest]
    assert len(got) == len(full) == 10
    assert all(np.array_equal(x, y) for x, y in zip(got, full))
    # the next epoch starts from batch 0 again, in its own order
    resumed.set_epoch(3)
    assert len(list(resumed)) == 10
    # a second pass over the same epoch without set_epoch also starts at 0
    again = make_loader(tmp_path, "train", 16, **kw)
    again.load_state_dict(sd)
    assert len(list(again)) == 10 - stop_after
    assert len(list(again)) == 10


def test_state_dict_refuses_other_setup(tmp_path):
    _write(tmp_path, {"train": 100})
    sd = make_loader(tmp_path, "train", 16, shuffle=True).state_dict()
    with pytest.raises(LoaderError, match="batch_size=16"):
        make_loader(tmp_path, "train", 8, shuffle=True).load_state_dict(sd)
    with pytest.raises(LoaderError, match="seed"):
        make_loader(tmp_path, "train", 16, shuffle=True, seed=1).load_state_dict(sd)
    # Contiguous ranges: each rank's rows depend on the world size, so it must match.
    with pytest.raises(LoaderError, match="world_size=1"):
        make_loader(tmp_path, "train", 16, shuffle=True, rank=0, world_size=2).load_state_dict(sd)


# ----------------------------------------------------------------------------- layouts


def test_parts_layout(tmp_path):
    parts = {"train": [300, 0, 450, 250]}
    arrs = _write(tmp_path, {"train": 1000, "val": 40}, parts=parts)["train"]
    split = NpySplit(tmp_path, "train")
    assert split.num_rows == 1000 and len(split._parts) == 4
    rows = np.array([0, 5, 299, 300, 301, 749, 750, 999])  # crosses part boundaries
    dense, sparse, labels = split.read(rows)
    np.testing.assert_array_equal(sparse, arrs[1][rows])
    np.testing.assert_array_equal(dense, arrs[0][rows])
    d2, s2, l2 = split.read(slice(290, 760))
    np.testing.assert_array_equal(s2, arrs[1][290:760])
    np.testing.assert_array_equal(l2, arrs[2][290:760])
    for shuffle in (False, True):
        seen = []
        for rank in range(2):
            for b in make_loader(tmp_path, "train", 64, rank=rank, world_size=2, shuffle=shuffle):
                _check_batch(b, *arrs)
                seen.append(_row_ids(b))
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(1000))
    assert NpySplit(tmp_path, "val").num_rows == 40  # unsharded split beside a sharded one


def _write_torchrec_days(d: Path, rows: list[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    offset = 0
    for day, n in enumerate(rows):
        rng = np.random.default_rng(day)
        dense = np.log(rng.integers(1, 100, (n, 13)) + 2.0).astype(np.float32)
        dense[:, 0] = offset + np.arange(n)  # global row id across all days
        sparse = rng.integers(0, 2**40, (n, 26), dtype=np.int64)  # raw hashed ids
        labels = rng.integers(0, 2, (n, 1), dtype=np.int32)
        np.save(d / f"day_{day}_dense.npy", dense)
        np.save(d / f"day_{day}_sparse.npy", sparse)
        np.save(d / f"day_{day}_labels.npy", labels)
        out.append((dense, sparse, labels))
        offset += n
    return out


def test_torchrec_layout(tmp_path):
    days = _write_torchrec_days(tmp_path, [120, 80, 101])
    sizes = [1000 + 7 * i for i in range(26)]
    data = open_torchrec_criteo(
        tmp_path, train_days=[0, 1], val_days=[(2, 0.0, 0.5)], test_days=[(2, 0.5, 1.0)],
        num_embeddings_per_feature=sizes,
    )
    s = data.schema
    assert s.sparse_names == [f"cat_{i}" for i in range(26)]
    assert list(s.dense_features) == [f"int_{i}" for i in range(13)]
    assert s.vocab_sizes == sizes
    assert s.splits == {"train": 200, "val": 50, "test": 51}
    dense_all = np.concatenate([x[0] for x in days])
    sparse_all = np.concatenate([x[1] for x in days]) % np.array(sizes)
    labels_all = np.concatenate([x[2] for x in days]).reshape(-1).astype(np.float32)
    seen = []
    for rank in range(2):
        for b in make_loader(data, "train", 32, rank=rank, world_size=2, shuffle=True, equal_batches=True):
            rows = _row_ids(b)
            seen.append(rows)
            kjt = b.sparse_features
            assert kjt.keys() == s.sparse_names and kjt.lengths().tolist() == [1] * (26 * len(rows))
            np.testing.assert_array_equal(kjt.values().numpy(), sparse_all[rows].T.reshape(-1))
            np.testing.assert_array_equal(b.dense_features.numpy(), dense_all[rows])
            np.testing.assert_array_equal(b.labels.numpy(), labels_all[rows])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(200))
    val_rows = np.concatenate([_row_ids(b) for b in make_loader(data, "val", 16)])
    test_rows = np.concatenate([_row_ids(b) for b in make_loader(data, "test", 16)])
    np.testing.assert_array_equal(np.concatenate([val_rows, test_rows]), 200 + np.arange(101))
    # one modulo for every field
    one = open_torchrec_criteo(tmp_path, train_days=[1], num_embeddings_per_feature=97)
    b = next(iter(make_loader(one, "train", 80)))
    np.testing.assert_array_equal(b.sparse_features.values().numpy(), (days[1][1] % 97).T.reshape(-1))


def test_criteo_layout_names_are_torchrecs():
    """``recsys.data.criteo_layout`` spells TorchRec's field names without importing torchrec."""
    from torchrec.datasets.criteo import DEFAULT_CAT_NAMES, DEFAULT_INT_NAMES

    from recsys.data import criteo_layout as cl

    assert list(cl.TORCHREC_SPARSE_NAMES) == list(DEFAULT_CAT_NAMES)
    assert list(cl.TORCHREC_DENSE_NAMES) == list(DEFAULT_INT_NAMES)
    assert cl.RAW_COLUMNS[:2] == ("label", "I1") and cl.RAW_COLUMNS[-1] == "C26"
    assert len(cl.RAW_COLUMNS) == 1 + cl.NUM_DENSE + cl.NUM_SPARSE == 40


# ----------------------------------------------------------------------------- errors


def test_errors_are_one_line_and_name_the_file(tmp_path):
    def err(exc, fn) -> str:
        with pytest.raises(exc) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    assert "no such directory" in err(LoaderError, lambda: NpySplit(tmp_path / "nope", "train"))
    assert "meta.json: no such file" in err(SchemaError, lambda: NpySplit(tmp_path, "train"))
    _write_torchrec_days(tmp_path, [10])
    assert "open_torchrec_criteo" in err(LoaderError, lambda: NpySplit(tmp_path, "train"))

    d = tmp_path / "ours"
    d.mkdir()
    _write(d, {"train": 50, "val": 20})
    assert "no split 'test'" in err(LoaderError, lambda: NpySplit(d, "test"))
    (d / "val_labels.npy").unlink()
    assert "val_labels.npy: no such file" in err(LoaderError, lambda: NpySplit(d, "val"))
    np.save(d / "val_labels.npy", np.zeros(19, np.float32))
    assert "val_labels.npy: shape [19], expected [20]" in err(LoaderError, lambda: NpySplit(d, "val"))
    np.save(d / "val_labels.npy", np.zeros(20, np.float32))
    np.save(d / "val_sparse.npy", np.zeros((20, 3), np.int32))
    assert "val_sparse.npy: shape [20, 3], expected [N, 4]" in err(LoaderError, lambda: NpySplit(d, "val"))
    np.save(d / "val_sparse.npy", np.zeros((20, 4), np.float32))
    assert "val_sparse.npy: dtype float32" in err(LoaderError, lambda: NpySplit(d, "val"))
    np.save(d / "val_sparse.npy", np.zeros((20, 4), np.int32))
    np.save(d / "val_dense.npy", np.zeros((20, 2), np.float32))
    assert "val_dense.npy: shape [20, 2], expected [20, 3]" in err(LoaderError, lambda: NpySplit(d, "val"))
    (d / "val_dense.npy").write_bytes(b"not an npy file")
    assert "val_dense.npy: not a readable .npy file" in err(LoaderError, lambda: NpySplit(d, "val"))
    # rows disagree with meta.json
    for kind, a in zip(("dense", "sparse", "labels"), _arrays(21)):
        np.save(d / f"val_{kind}.npy", a)
    assert "split 'val' has 20 rows, the files hold 21" in err(LoaderError, lambda: NpySplit(d, "val"))
    # an id beyond num_embeddings is named with its file and row
    dense, sparse, labels = _arrays(20)
    sparse[13, 2] = VOCAB[2]
    np.save(d / "val_sparse.npy", sparse)
    for kind, a in (("dense", dense), ("labels", labels)):
        np.save(d / f"val_{kind}.npy", a)
    msg = err(LoaderError, lambda: list(make_loader(d, "val", 8, prefetch=2)))
    assert "val_sparse.npy row 13: field 'C2' id 17 is outside [0, 17)" in msg
    # parts whose row counts disagree with meta.json
    p = tmp_path / "parts"
    p.mkdir()
    _write(p, {"train": 30}, parts={"train": [10, 20]})
    meta = json.loads((p / "meta.json").read_text())
    meta["preprocessing"]["parts"]["train"] = [15, 15]
    (p / "meta.json").write_text(json.dumps(meta))
    assert "train_sparse.00000.npy: 10 rows, but" in err(LoaderError, lambda: NpySplit(p, "train"))
    # TorchRec layout
    assert "expected 1 or 26" in err(
        LoaderError, lambda: open_torchrec_criteo(tmp_path, train_days=[0], num_embeddings_per_feature=[5, 5])
    )
    assert "day_7_sparse.npy: no such file" in err(
        LoaderError, lambda: open_torchrec_criteo(tmp_path, train_days=[7], num_embeddings_per_feature=5)
    )
    assert "bad day" in err(
        LoaderError, lambda: open_torchrec_criteo(tmp_path, train_days=[(0, 0.5, 0.2)], num_embeddings_per_feature=5)
    )


# ----------------------------------------------------------------------------- wide schema + prefetch
# (throughput is measured by ``python -m recsys.bench.loader``, not here)


@pytest.mark.parametrize("shuffle", [False, True])
def test_wide_schema_prefetch_covers_every_row_once(tmp_path, shuffle):
    """Criteo-like width (26 sparse, 13 dense), prefetching, a ragged last batch:
    one epoch yields every row exactly once, with its own ids and label."""
    n, F, Dd = 3000, 26, 13
    rng = np.random.default_rng(0)
    Schema(
        "wide", tuple(SparseFeature(f"C{i}", 1000) for i in range(F)), tuple(f"I{i}" for i in range(Dd)),
        splits={"train": n},
    ).save(tmp_path)
    sparse = rng.integers(0, 1000, (n, F), dtype=np.int32)
    dense = rng.standard_normal((n, Dd), dtype=np.float32)
    dense[:, 0] = np.arange(n)  # row id
    labels = (rng.random(n) < 0.3).astype(np.float32)
    for kind, a in (("sparse", sparse), ("dense", dense), ("labels", labels)):
        np.save(tmp_path / f"train_{kind}.npy", a)
    loader = make_loader(tmp_path, "train", 512, shuffle=shuffle, prefetch=2, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 6  # 5 x 512 + 440
    rows = np.concatenate([_row_ids(b) for b in batches])
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    assert np.array_equal(rows, np.arange(n)) != shuffle
    last = batches[-1]
    ids = last.sparse_features.values().view(F, -1)  # KJT values are key-major: [F, B]
    np.testing.assert_array_equal(ids.numpy().T, sparse[_row_ids(last)])
    np.testing.assert_array_equal(last.labels.numpy(), labels[_row_ids(last)])
