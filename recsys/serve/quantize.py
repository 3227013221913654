"""Quantized members for serving: int8 (or int4, fp16) embedding tables through TorchRec's
inference path, the dense part left in float32.

Why: a member's tables are nearly all of its bytes, and serving only reads them.  TorchRec's
``quantize_inference_model`` swaps every ``EmbeddingBagCollection`` for its
``QuantEmbeddingBagCollection``, whose lookups run FBGEMM's ``IntNBitTableBatchedEmbeddingBags``
kernels (CPU and CUDA).  Rowwise int8 stores each row as D uint8 codes plus a float16 scale
and bias (4 bytes), dequantized on the fly: ``w ~= scale * code + bias``, so each value is off
by at most ``scale / 2 = (max(row) - min(row)) / 510``.

Storage per row, float32 -> int8: ``4 D`` bytes -> ``D + 4`` bytes, rounded up to the row
alignment.  On CPU this module uses FBGEMM's own CPU alignment (1 byte), not TorchRec's
default of 16 (a GPU alignment): for D = 8 that is 12 bytes a row instead of 16, with the
same codes and the same outputs.  The ratio is ``4 D / (D + 4)``: 2.7x at D = 8, 3.8x at
D = 64, approaching 4x as D grows.

Example::

    member = load_trained_members(cfg, [0], "checkpoints/demo")[0]     # float32, eval mode
    qmember = quantize_member(member)                                  # int8 tables; a copy
    qmember(dense, kjt)                                                # logits [B], close to member's
    table_bytes(member), table_bytes(qmember)                          # 2321152, 872576 on the demo (2.66x)
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from recsys.errors import UserError

if TYPE_CHECKING:
    from recsys.models.member import Member

__all__ = ["QUANT_DTYPES", "QuantizeError", "check_kernels", "dense_bytes", "quantize_member", "table_bytes"]

QUANT_DTYPES: dict[str, torch.dtype] = {"int8": torch.int8, "int4": torch.quint4x2, "fp16": torch.float16}
"""Table dtypes offered (name -> the torch dtype TorchRec's ``QuantConfig`` takes)."""

_CPU_ROW_ALIGNMENT = 1  # FBGEMM's default for CPU tables (IntNBitTableBatchedEmbeddingBagsCodegen)


class QuantizeError(UserError, ValueError):
    """A table dtype this project does not offer, or one whose FBGEMM kernel fails here."""


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in QUANT_DTYPES:
        raise QuantizeError(f"quantize: unsupported table dtype {dtype!r}; choose one of {', '.join(QUANT_DTYPES)}")
    return QUANT_DTYPES[dtype]


def _quantize_ebcs(module: nn.Module, weight_dtype: torch.dtype, row_alignment: int) -> None:
    """Swaps every EBC inside ``module`` (in place) for a ``QuantEmbeddingBagCollection``."""
    from torchrec.inference.modules import quantize_inference_model
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.quant.embedding_modules import quant_prep_customize_row_alignment

    quant_prep_customize_row_alignment(module, [EmbeddingBagCollection], row_alignment)
    quantize_inference_model(module, quantization_dtype=weight_dtype, output_dtype=torch.float32)


def check_kernels(dtype: str = "int8", device: torch.device | str = "cpu") -> None:
    """Raises a one-line ``QuantizeError`` unless FBGEMM can quantize and look up a ``dtype``
    table on ``device``: a two-row table is quantized and read once (milliseconds).

    Example::

        check_kernels("int8")          # returns None on a machine with fbgemm-gpu(-cpu)
        check_kernels("int3")          # QuantizeError: unsupported table dtype 'int3'; ...
    """
    weight_dtype = _torch_dtype(dtype)
    dev = torch.device(device)
    try:
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        probe = nn.Module()
        probe.add_module("ebc", EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="t", embedding_dim=8, num_embeddings=2, feature_names=["f"])], device=dev))
        _quantize_ebcs(probe, weight_dtype, _CPU_ROW_ALIGNMENT if dev.type == "cpu" else 16)
        kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([0, 1], device=dev),
                                                  torch.tensor([1, 1], device=dev))
        probe.get_submodule("ebc")(kjt)
    except (ImportError, RuntimeError, NotImplementedError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(f"quantize: FBGEMM has no {dtype} embedding kernel on {dev.type} here ({first})") from e


def quantize_member(member: Member, dtype: str = "int8", row_alignment: int | None = None) -> Member:
    """A copy of ``member`` whose EBC is TorchRec's ``QuantEmbeddingBagCollection`` with
    ``dtype`` tables (rowwise int8 by default); every dense parameter stays float32, and the
    forward keeps the member's contract: ``(dense [B, Dd], KJT) -> logits [B]``.

    The original is left untouched (float, trainable).  ``row_alignment`` (bytes a row is
    padded to) defaults to 1 on CPU, TorchRec's 16 elsewhere.  Raises ``QuantizeError`` (one
    line) for an unknown dtype or one FBGEMM cannot run on the member's device.

    Example::

        qmember = quantize_member(member)             # int8
        (qmember(dense, kjt) - member(dense, kjt)).abs().max()   # ~1e-3 on the demo
    """
    weight_dtype = _torch_dtype(dtype)
    params = list(member.parameters())
    device = params[0].device if params else torch.device("cpu")
    check_kernels(dtype, device)
    if row_alignment is None:
        row_alignment = _CPU_ROW_ALIGNMENT if device.type == "cpu" else 16
    qmember = copy.deepcopy(member).eval()
    _quantize_ebcs(qmember, weight_dtype, row_alignment)
    return qmember


def _embedding_modules() -> tuple[type[nn.Module], ...]:
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

    return (EmbeddingBagCollection, QuantEmbeddingBagCollection)


def dense_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module`` outside its embedding collections (the
    part quantization leaves in float32); with ``table_bytes``, the member's whole weight.

    Example::

        dense_bytes(member) == dense_bytes(quantize_member(member))    # True
    """
    ebcs = _embedding_modules()
    inside = {id(t) for m in module.modules() if isinstance(m, ebcs) for t in (*m.parameters(), *m.buffers())}
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers()) if id(t) not in inside}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def table_bytes(module: nn.Module) -> int:
    """Bytes of embedding-table storage in ``module``, counted from the tensors themselves.

    Float ``EmbeddingBagCollection``: the storages of its parameters.  Quantized
    (``QuantEmbeddingBagCollection``): the FBGEMM kernels' weight buffers (host, device and
    UVM), which hold the codes, the per-row scale/bias and the row padding.  Each storage is
    counted once (a view does not count twice); dense layers are not counted.

    Example::

        table_bytes(member)                     # 72536 rows * 8 dims * 4 bytes = 2321152 (demo)
        table_bytes(quantize_member(member))    # 872576: 72536 * (8 + 4) plus FBGEMM's per-table padding
    """
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

    seen: dict[tuple[str, int], int] = {}

    def add(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()

    for m in module.modules():
        if isinstance(m, QuantEmbeddingBagCollection):
            for tbe in m._emb_modules:  # the FBGEMM kernels: not registered submodules unless register_tbes
                for name in ("weights_host", "weights_dev", "weights_uvm"):
                    t = getattr(tbe, name, None)
                    if isinstance(t, torch.Tensor) and t.numel() > 0:
                        add(t)
        elif isinstance(m, EmbeddingBagCollection):
            for p in m.parameters():
                add(p)
    return sum(seen.values())
