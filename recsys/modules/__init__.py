"""Reusable blocks and interactions, one file per kind (as ``torchrec/modules``).

The architectures in ``recsys.models`` wire these together; nothing here knows a
member config, a schema or the registry, so a block can serve several models
(``InnerProductInteraction`` is IPNN's product layer and a D-MoE expert).

| file | holds |
|---|---|
| ``mlp.py`` | ``MLP``: Linear + ReLU stack |
| ``arches.py`` | the DLRM-style arches: ``SparseArch``, ``MultiSetSparseArch``, ``DenseArch``, ``OverArch`` |
| ``cross.py`` | DCN / DCN-v2 cross nets: ``ParallelCrossInteraction``, ``CrossFeatures`` and their FLOPs |
| ``fm.py`` | ``fm_second_order``, FM's pairwise term in O(T*D) |
| ``inner_product.py`` | ``InnerProductInteraction``, IPNN's product layer |
| ``flatten.py`` | ``FlattenInteraction``, the identity interaction (FNN) |
| ``bilinear.py`` | ``BilinearAggregation``, FinalMLP's two-stream fusion |
| ``gating.py`` | ``FeatureGate``, FinalMLP's per-stream feature gate |
| ``token_mixing.py`` | RankMixer's token mixing, per-token FFN and layer |
| ``wukong_layers.py`` | ``WukongLayer``: factorization-machine + linear-compress block |
| ``decorrelation.py`` | ``decorrelation_loss``, D-MoE's expert de-correlation term |

FLOP accounting convention (used by ``recsys.budget`` and checked against
``torch.utils.flop_counter.FlopCounterMode`` in tests): every block with dense
weights has ``flops_per_example() -> int`` (``recsys.models.protocols.FlopCounted``)
and counts only the matrix-multiply family (``mm``/``addmm``/``bmm``/``matmul``/
``einsum``), 2 FLOPs per multiply-add, per example.  Element-wise ops, activations
and norms are not counted, exactly as FlopCounterMode does not count them.

Example::

    from recsys.modules.mlp import MLP
    mlp = MLP(64, [32, 16])
    mlp(torch.randn(8, 64)).shape, mlp.flops_per_example()   # (8, 16), 2*(64*32 + 32*16)
"""
