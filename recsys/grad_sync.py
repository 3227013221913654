"""Why a group's gradients do not depend on its rank count, and the one switch that matters.

A group of G ranks trains on a global batch of B rows, B/G rows per rank
(``make_loader(..., global_batch=True)``), and each rank's loss is the mean over
its own rows.  The gradient of the global-batch mean loss is then
``(1/G) sum_r grad(mean_r)``.  Both halves of a DMP model produce exactly that
in TorchRec 1.8 (verified with one SGD step on G = 1 vs G = 2, table-, row- and
column-wise: tests/test_train_group.py::test_global_batch_gradients_do_not_depend_on_ranks):

- dense parameters sit in DDP, which all-reduces and AVERAGES over the group;
- sharded embedding tables receive the other ranks' pooled-embedding gradients
  through the backward of TorchRec's all-to-all / reduce-scatter, which sum them
  and then divide by the group size (``torchrec.distributed.comm_ops``,
  ``GRADIENT_DIVISION``, on by default) -- precisely to match DDP.

So no loss scaling and no DDP comm hook are needed, as long as (a) every rank's
slice has the same size (global batches with ``drop_last``: B % G == 0) and
(b) nobody turns ``GRADIENT_DIVISION`` off: with it off the tables would step
G times too far (the test shows that too).  ``require_global_mean_gradients``
checks (b) at start-up instead of letting a run silently depend on G.

Example::

    require_global_mean_gradients()      # before training a group on G ranks
"""
from __future__ import annotations

from torchrec.distributed import comm_ops

from recsys.errors import UserError


class GradientScalingError(UserError, RuntimeError):
    """The sharded embedding backward would not average over the group's ranks."""


def require_global_mean_gradients() -> None:
    """Raises unless TorchRec divides embedding gradients by the group size (its default).

    Without the division, embedding gradients are the SUM over the group's ranks
    while DDP averages the dense ones, so a group's result would depend on how
    many ranks it ran on.
    """
    if not comm_ops.get_gradient_division():
        raise GradientScalingError(
            "torchrec.distributed.comm_ops.set_gradient_division(False) is in effect: sharded "
            "embedding gradients would be summed over ranks (DDP averages the dense ones), so "
            "results would depend on the rank count; turn it back on"
        )
