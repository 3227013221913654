"""Quantized members (recsys/serve/quantize.py, recsys/bench/quantize.py): int8 rowwise tables
through TorchRec's inference path stay within int8's rounding error of the float member, hold
about a quarter of the bytes, merge like float members, and the benchmark CLI reports them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrec.datasets.utils import Batch

from recsys.bench import quantize as bench
from recsys.ensemble import EnsembleGroup, merge_logits
from recsys.models.member import Member
from recsys.models.registry import build_member
from recsys.serve.quantize import QUANT_DTYPES, QuantizeError, check_kernels, dense_bytes, quantize_member, table_bytes
from tests.dist_harness import run_ranks
from tests.test_evaluate import SPECS, _save_checkpoints, _write_split
from tests.toy_data import toy_batches, toy_schema

D = 64  # wide enough that the 4-byte scale/bias per row is small next to the D codes


@pytest.fixture(scope="module")
def members() -> tuple[Member, Member, Batch]:
    schema = toy_schema(num_fields=4, vocab=200, num_dense=2)
    fnn = build_member(f"fnn:embedding_dim={D},mlp=16,seed=1", schema, name="m0_fnn").eval()
    dcn = build_member(f"dcnv2:embedding_dim={D},mlp=16,cross_layers=1,seed=2", schema, name="m1_dcnv2").eval()
    batch = next(toy_batches(schema, 256, 256, seed=5))
    return fnn, dcn, batch


def test_int8_tables_are_within_rowwise_rounding_and_really_quantized(members: tuple[Member, Member, Batch]) -> None:
    fnn, _, batch = members
    q = quantize_member(fnn)
    kjt = batch.sparse_features  # one id per field, sum pooling: a pooled vector is one table row
    with torch.inference_mode():
        ref = fnn.sparse_arch(kjt)  # [B, F, D]
        got = q.sparse_arch(kjt)
    # Rowwise int8: w = scale * code + bias with scale = (max - min) / 255 per row, so rounding is
    # at most scale / 2; scale and bias are stored as float16 (relative error 2^-11), which can add
    # 255 * scale * 2^-11 (= scale / 8) and |bias| * 2^-11.  Bound per row: 0.65 * scale + |min| / 2048.
    lo, hi = ref.amin(dim=2, keepdim=True), ref.amax(dim=2, keepdim=True)
    bound = 0.65 * (hi - lo) / 255 + lo.abs() / 2048 + 1e-7
    err = (got - ref).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    assert float(err.max()) > 1e-6  # not the float tables under another name
    # the copy is quantized; the original and every dense parameter are untouched float32
    assert type(fnn.sparse_arch.embedding_bag_collection).__module__ == "torchrec.modules.embedding_modules"
    assert type(q.sparse_arch.embedding_bag_collection).__module__ == "torchrec.quant.embedding_modules"
    dense_f = {n: p for n, p in fnn.named_parameters() if "embedding_bag" not in n}
    dense_q = dict(q.named_parameters())
    assert dense_f.keys() == dense_q.keys() and dense_f
    assert all(dense_q[n].dtype == torch.float32 and torch.equal(dense_q[n], p) for n, p in dense_f.items())


def test_logits_close_to_float_members_and_the_merge_still_works(members: tuple[Member, Member, Batch]) -> None:
    fnn, dcn, batch = members
    qs = [quantize_member(m) for m in (fnn, dcn)]
    dense, kjt = batch.dense_features, batch.sparse_features
    with torch.inference_mode():
        ref = EnsembleGroup([fnn, dcn])(dense, kjt)  # [B, 2]
        got = EnsembleGroup(qs)(dense, kjt)
        merged_ref, merged = merge_logits(ref), merge_logits(got)
    assert got.shape == ref.shape == (256, 2) and merged.shape == (256,)
    # Each embedding value moves by <= ~1/400 of its row's range (previous test); through these
    # small MLPs a logit moves by that order relative to the logits' spread.  2% of the spread
    # leaves a wide margin over the ~0.3% seen, and far less than a real model difference.
    tol = 0.02 * float(ref.std()) + 1e-4
    assert float((got - ref).abs().max()) < tol
    assert float((merged - merged_ref).abs().max()) < tol
    assert not torch.equal(got, ref)


def test_table_bytes_drop_about_four_times(members: tuple[Member, Member, Batch]) -> None:
    fnn, _, _ = members
    rows = sum(c.num_embeddings for c in fnn.sparse_arch.embedding_bag_collection.embedding_bag_configs())
    tables = len(fnn.sparse_arch.embedding_bag_collection.embedding_bag_configs())
    assert table_bytes(fnn) == rows * D * 4  # float32, exactly
    qbytes = table_bytes(quantize_member(fnn))
    # int8 codes + fp16 scale and bias per row; FBGEMM pads each table to at most 64 bytes
    assert rows * (D + 4) <= qbytes <= rows * (D + 4) + 64 * tables
    assert 3.5 < table_bytes(fnn) / qbytes < 4.0  # 4 D / (D + 4) = 3.76 at D = 64
    dense = sum(p.numel() * 4 for n, p in fnn.named_parameters() if "embedding_bag" not in n)
    assert dense_bytes(fnn) == dense_bytes(quantize_member(fnn)) == dense > 0  # the dense part stays float32


def test_unsupported_dtype_is_one_line() -> None:
    check_kernels("int8")  # FBGEMM's CPU kernels are here
    assert bench.build_parser().parse_args(["--config", "c", "--checkpoint", "d", "--dtype", "int4"]).dtype == "int4"
    dtype_action = next(a for a in bench.build_parser()._actions if a.dest == "dtype")
    assert tuple(dtype_action.choices or ()) == tuple(QUANT_DTYPES)  # the CLI offers what the module does
    with pytest.raises(QuantizeError, match=r"^quantize: unsupported table dtype 'int3'; choose one of int8"):
        check_kernels("int3")


def test_cli_help_and_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "examples:" in capsys.readouterr().out
    data = tmp_path / "data"
    data.mkdir()
    _write_split(data, 30, split="test")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "t"\ndata_dir = "{data}"\nmembers = {SPECS!r}\ngroups = [[0, 2], [1]]\n'.replace("'", '"'))
    assert bench.main(["--config", str(cfg), "--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{bench.PROG}: error: ") and "no complete checkpoint" in err
    # a real (toy) run: every member and the ensemble in the table
    groups = [[0, 2], [1]]
    run_ranks(_save_checkpoints, 1, str(tmp_path / "ckpt"), SPECS, groups)
    out = tmp_path / "q.md"
    assert bench.main(["--config", str(cfg), "--checkpoint", str(tmp_path / "ckpt"), "--latency-batch", "8",
                       "--repeats", "2", "--out", str(out)]) == 0
    table = out.read_text()
    assert all(f"| {n} |" in table for n in ("m0_fnn", "m1_fnn", "m2_fnn", "ensemble (M=3)"))
