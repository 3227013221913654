"""Converter presets: ``--preset tts4ctr`` preprocesses as the official TTS4CTR code does.

Why a preset and not new defaults: our defaults stay where they are (the same thresholds), and
the one departure of the official preprocessing -- Criteo's numeric tokens exempt from
min-count -- becomes a named, documented option (``--numeric-min-count``) that the preset sets.

What the official code does (aTitye/TTS4CTR ``datatransform/{criteo,avazu,kdd}2TF.py`` and
``datatransform.py``), and what ``tts4ctr`` sets here:

=================  ===========================================  ================================
official           what it is                                   here, under ``--preset tts4ctr``
=================  ===========================================  ================================
``--threshold``    min count: criteo 10, avazu 2, kdd 10        ``--min-count`` of that dataset
``white_list``     Criteo's I1..I13 get an id for every token   ``--numeric-min-count 1``
``bucket``         v > 2: floor(ln(v)^2), else int(v)           ``--numeric discretize``
``--ratio``        random 0.8 / 0.1 / 0.1                       ``--split 0.8,0.1,0.1`` (default)
=================  ===========================================  ================================

Two differences stay, by design: the official code counts on all rows (val and test included)
where we count on train only (no leak into evaluation), so a numeric token never seen in train
is OOV here; and its tables have an OOV row only for fields that lost a value to the
threshold, ours always (id 0).

Every flag given explicitly wins over the preset (``ConvertConfig`` fields left at None are
the preset's to fill).

Example::

    cfg = apply_preset(ConvertConfig(dataset="criteo", output="o", inputs=["day_0"], preset="tts4ctr"))
    (cfg.min_count, cfg.numeric_min_count)    # (10, 1)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from recsys.data.convert.errors import InputError

if TYPE_CHECKING:
    from recsys.data.convert.driver import ConvertConfig


@dataclass(frozen=True)
class ConvertPreset:
    """What a preset sets, where the flags leave a value unset."""

    min_count: dict[str, int]  # per dataset: the official --threshold default
    numeric_min_count: int  # min count of Criteo's discretized numeric tokens (1: every train token)


PRESETS: dict[str, ConvertPreset] = {
    "tts4ctr": ConvertPreset(min_count={"criteo": 10, "avazu": 2, "kdd12": 10}, numeric_min_count=1),
}


def apply_preset(cfg: ConvertConfig) -> ConvertConfig:
    """``cfg`` with its preset's values wherever the flags left one unset; "" changes nothing.

    ``--hash`` counts nothing, so a preset (all min-counts) would apply nothing there, yet
    ``meta.json`` would record it as if the data were preprocessed by it: refused, one line.
    ``--vocab-from`` counts nothing either; there it sets nothing (the saved vocabulary has its
    own thresholds, from the preset when it was made with it).  The split and the numeric rule
    are our defaults already.
    """
    if not cfg.preset:
        return cfg
    if cfg.preset not in PRESETS:
        raise InputError(f"unknown preset {cfg.preset!r}; valid: {', '.join(PRESETS)}")
    if cfg.hash_size is not None:
        raise InputError(f"--preset {cfg.preset} sets min-counts; it does not apply with --hash")
    p = PRESETS[cfg.preset]
    counted = cfg.vocab_from is None  # (--hash was refused above)
    return replace(
        cfg,
        min_count=p.min_count.get(cfg.dataset) if counted and cfg.min_count is None else cfg.min_count,
        numeric_min_count=(p.numeric_min_count if counted and cfg.numeric_min_count is None
                           and cfg.dataset == "criteo" and cfg.numeric == "discretize" else cfg.numeric_min_count),
    )
