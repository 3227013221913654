"""Synthetic raw click logs in the real Criteo / Avazu / KDD12 layouts.

Why: every part of the pipeline (converters, loader, models, the ensemble) has to
be built and tested without multi-GB downloads, and a synthetic file is only a
useful test if (a) it has the exact raw format the converters will see in
production and (b) its labels carry a learnable signal with known ceiling.

Labels come from a *planted* model over the same features the converters
produce (Criteo numerics as ``floor(ln(v)^2)`` buckets, Avazu hour-of-day and
weekday): a first-order weight per value plus low-rank pairwise interactions
between random field pairs, so models that capture interactions beat a linear
one.  ``signal="higher-order"`` moves half of the interaction variance into
third-order terms over random field triples (``PlantedModel``), which a
pairwise model cannot fit: deeper cross nets and wider MLPs have something to find.  ``write_*`` returns the planted model's AUC on the generated rows, the
best any model can do.

Values are drawn log-uniformly over each field's vocabulary (P(rank r) ~ 1/r,
i.e. Zipf with exponent 1), so there is a heavy head and a long tail of rare
values, which exercises ``--min-count``.

Example::

    from recsys.data.synth import write_criteo
    auc = write_criteo("data/raw/criteo.tsv.gz", rows=100_000, seed=0)
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from recsys.data.criteo_layout import RAW_COLUMNS
from recsys.eval.metrics import auc_score

DATASETS = ("criteo", "avazu", "kdd12")
BATCH_ROWS = 262_144  # rows generated and written at a time: bounds memory

CRITEO_COLUMNS = list(RAW_COLUMNS)  # label, I1..I13, C1..C26: the layout is written once, in criteo_layout
AVAZU_COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
    "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
    "C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")
KDD12_COLUMNS = [
    "Click", "Impression", "DisplayURL", "AdID", "AdvertiserID", "Depth", "Position",
    "QueryID", "KeywordID", "TitleID", "DescriptionID", "UserID",
]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """``recsys.eval.metrics.auc_score`` (ties count 1/2) under this module's old name and
    argument order (labels first), kept for callers of ``recsys.data.synth.auc``."""
    return auc_score(scores, labels)


def zipf_ranks(rng: np.random.Generator, vocab: int, n: int) -> np.ndarray:
    """Ranks in [0, vocab) with P(r) ~ 1/(r+1): log-uniform, vectorized, no CDF table."""
    r = np.floor(np.exp(rng.random(n) * np.log(vocab + 1.0))).astype(np.int64) - 1
    return np.clip(r, 0, vocab - 1)


SIGNALS = ("pairwise", "higher-order")
HIGHER_ORDER_SHARE = 0.5  # default share of the interaction-logit variance carried by the 3-way terms
INTERACTION_SD = 1.6  # standard deviation of the planted interaction logit (pairwise + higher-order)


@dataclass
class PlantedModel:
    """logit = bias + sum_f w_f[x_f] + pair_scale * sum_{(f,g)} <e_f[x_f], e_g[x_g]>
    + triple_scale * sum_{(f,g,h)} sum_k u_f[x_f,k] u_g[x_g,k] u_h[x_h,k].

    The third-order terms (``signal="higher-order"``) are rank-``rank`` CP tensors over random
    field triples: a model limited to pairwise crosses (FM, one cross layer, IPNN's inner
    products) fits only their pairwise shadow (the Zipf head makes conditional means nonzero),
    while deeper cross nets and MLPs can fit them.  ``higher_order_share`` is their expected share of the interaction variance (over the
    draw of the tables, every CP product has unit variance); the total interaction variance
    stays ``INTERACTION_SD**2`` either way, so the two signals are equally hard overall and
    differ only in how the signal is spread over orders.  The first-order and pairwise tables
    are drawn first from the same stream, so ``signal="pairwise"`` is the historical model.
    """

    weights: list[np.ndarray]
    latents: list[np.ndarray]
    pairs: list[tuple[int, int]]
    bias: float
    pair_scale: float
    triple_latents: list[np.ndarray] = field(default_factory=list)
    triples: list[tuple[int, int, int]] = field(default_factory=list)
    triple_scale: float = 0.0

    @classmethod
    def make(
        cls,
        vocab_sizes: list[int],
        seed: int,
        bias: float,
        rank: int = 4,
        signal: str = "pairwise",
        higher_order_share: float = HIGHER_ORDER_SHARE,
    ) -> "PlantedModel":
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}; choose from {', '.join(SIGNALS)}")
        if not 0.0 <= higher_order_share < 1.0:
            raise ValueError(f"higher_order_share must be in [0, 1), got {higher_order_share}")
        rng = np.random.default_rng([seed, 7919])
        num_fields = len(vocab_sizes)
        # float32 tables: the gathers below dominate generation time
        weights = [(0.35 * rng.standard_normal(v)).astype(np.float32) for v in vocab_sizes]
        latents = [rng.standard_normal((v, rank)).astype(np.float32) for v in vocab_sizes]
        all_pairs = [(a, b) for a in range(num_fields) for b in range(a + 1, num_fields)]
        chosen = rng.choice(len(all_pairs), size=min(len(all_pairs), max(2, num_fields * 2 // 3)), replace=False)
        pairs = [all_pairs[i] for i in sorted(chosen)]
        if signal == "pairwise" or num_fields < 3:
            return cls(weights, latents, pairs, bias, INTERACTION_SD / np.sqrt(rank * len(pairs)))
        trng = np.random.default_rng([seed, 7919, 3])  # its own stream: the pairwise tables stay as they were
        triple_latents = [trng.standard_normal((v, rank)).astype(np.float32) for v in vocab_sizes]
        n_triples = min(math.comb(num_fields, 3), max(2, num_fields // 3))
        triples: set[tuple[int, int, int]] = set()
        while len(triples) < n_triples:
            a, b, c = sorted(int(f) for f in trng.choice(num_fields, size=3, replace=False))
            triples.add((a, b, c))
        pair_sd = INTERACTION_SD * np.sqrt(1.0 - higher_order_share)
        triple_sd = INTERACTION_SD * np.sqrt(higher_order_share)
        return cls(weights, latents, pairs, bias, pair_sd / np.sqrt(rank * len(pairs)),
                   triple_latents, sorted(triples), triple_sd / np.sqrt(rank * n_triples))

    def _add_pairwise(self, out: np.ndarray, idx: list[np.ndarray]) -> np.ndarray:
        for a, b in self.pairs:
            out += np.float32(self.pair_scale) * np.einsum("nk,nk->n", self.latents[a][idx[a]], self.latents[b][idx[b]])
        return out

    def pairwise_logits(self, idx: list[np.ndarray]) -> np.ndarray:
        """The pairwise interaction part alone, [N] float32."""
        return self._add_pairwise(np.zeros(idx[0].shape[0], dtype=np.float32), idx)

    def higher_order_logits(self, idx: list[np.ndarray]) -> np.ndarray:
        """The third-order part alone, [N] float32 (zeros for the pairwise signal)."""
        out = np.zeros(idx[0].shape[0], dtype=np.float32)
        u = self.triple_latents
        for a, b, c in self.triples:
            out += np.float32(self.triple_scale) * (u[a][idx[a]] * u[b][idx[b]] * u[c][idx[c]]).sum(axis=1)
        return out

    def logits(self, idx: list[np.ndarray]) -> np.ndarray:
        out = np.full(idx[0].shape[0], self.bias, dtype=np.float32)
        for f, x in enumerate(idx):
            out += self.weights[f][x]
        self._add_pairwise(out, idx)
        if self.triples:
            out += self.higher_order_logits(idx)
        return out.astype(np.float64)


def _hex_vocab(rng: np.random.Generator, vocab: int) -> pa.Array:
    """``vocab`` distinct 8-hex-digit lowercase strings, like Criteo's hashed categoricals."""
    vals = rng.choice(2**32, size=vocab, replace=False).astype(np.uint32)
    nibbles = (vals[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    return pa.array(np.ascontiguousarray(chars).view("S8").ravel(), type=pa.binary()).cast(pa.string())


def _int_vocab(rng: np.random.Generator, vocab: int, high: int) -> np.ndarray:
    return rng.choice(high, size=vocab, replace=False).astype(np.int64)


def _ints_as_strings(values: np.ndarray, null_mask: np.ndarray | None = None) -> pa.Array:
    return pc.cast(pa.array(values, mask=null_mask), pa.string())


def _open_sink(path: Path, gz: bool) -> pa.NativeFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        return pa.CompressedOutputStream(str(path), "gzip")
    return pa.OSFile(str(path), "wb")


def _write(
    path: str | Path,
    rows: int,
    seed: int,
    columns: list[str],
    delimiter: str,
    header: bool,
    make_batch: Callable[[np.random.Generator, int, int], tuple[list[pa.Array], np.ndarray, np.ndarray]],
    desc: str,
    progress: bool,
) -> float:
    """Drives ``make_batch(rng, n, start) -> (columns, labels, planted_prob)`` and streams CSV out."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    all_labels, all_probs = [], []
    # the header is written by hand: pyarrow would quote the names even with quoting_style="none"
    opts = pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
    with _open_sink(tmp, path.suffix == ".gz") as sink, tqdm(total=rows, desc=desc, unit="row", disable=not progress) as bar:
        if header:
            sink.write((delimiter.join(columns) + "\n").encode())
        for b, start in enumerate(range(0, rows, BATCH_ROWS)):
            n = min(BATCH_ROWS, rows - start)
            rng = np.random.default_rng([seed, b])
            cols, labels, probs = make_batch(rng, n, start)
            table = pa.Table.from_arrays(cols, names=columns)
            pacsv.write_csv(table, sink, write_options=opts)
            all_labels.append(labels)
            all_probs.append(probs)
            bar.update(n)
    tmp.replace(path)
    if rows == 0:
        return float("nan")
    return auc_score(np.concatenate(all_probs), np.concatenate(all_labels))


# ----------------------------------------------------------------------------- Criteo

CRITEO_NUM_VOCAB = 64  # planted-model table size for a numeric bucket (index 0 = empty)
CRITEO_CAT_VOCAB = [1000, 500, 50_000, 20_000, 200, 20, 10_000, 500, 3, 30_000, 5000, 40_000, 3000,
                    26, 8000, 40_000, 10, 4000, 2000, 4, 40_000, 15, 15, 20_000, 80, 15_000]
CRITEO_EMPTY_FRAC = [0.45, 0.0, 0.2, 0.2, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.75, 0.2]
CRITEO_CAT_EMPTY = [0.0] * 18 + [0.4, 0.4, 0.0, 0.75, 0.0, 0.0, 0.4, 0.4]


def criteo_bucket(values: np.ndarray) -> np.ndarray:
    """The paper's discretization: v > 2 -> floor(ln(v)^2), else v (ints, so -2..2 stay)."""
    v = values.astype(np.float64)
    big = v > 2
    out = v.copy()
    out[big] = np.floor(np.log(v[big]) ** 2)
    return out.astype(np.int64)


def write_criteo(path: str | Path, rows: int, seed: int = 0, progress: bool = False, signal: str = "pairwise") -> float:
    """Writes a Criteo TSV (label, I1..I13, C1..C26, no header); returns the planted AUC."""
    vrng = np.random.default_rng([seed, 1])
    vocabs = [_hex_vocab(vrng, v) for v in CRITEO_CAT_VOCAB]
    model = PlantedModel.make([CRITEO_NUM_VOCAB] * 13 + CRITEO_CAT_VOCAB, seed, bias=-1.3, signal=signal)
    mu = vrng.uniform(0.5, 5.0, size=13)
    sigma = vrng.uniform(0.8, 2.0, size=13)

    def make_batch(rng: np.random.Generator, n: int, start: int) -> tuple[list[pa.Array], np.ndarray, np.ndarray]:
        cols: list[pa.Array] = []
        idx: list[np.ndarray] = []
        for j in range(13):
            v = np.floor(np.exp(rng.normal(mu[j], sigma[j], n))).astype(np.int64) - 1
            if j == 1:  # I2 has the negatives in the real data
                v -= (rng.random(n) < 0.1).astype(np.int64) * 2
            empty = rng.random(n) < CRITEO_EMPTY_FRAC[j]
            idx.append(np.where(empty, 0, np.clip(criteo_bucket(v) + 3, 1, CRITEO_NUM_VOCAB - 1)))
            cols.append(_ints_as_strings(v, empty))
        for j, voc in enumerate(CRITEO_CAT_VOCAB):
            r = zipf_ranks(rng, voc, n)
            empty = rng.random(n) < CRITEO_CAT_EMPTY[j]
            r[empty] = 0  # the planted model sees "empty" as the head value's slot
            idx.append(r)
            cols.append(vocabs[j].take(pa.array(r, mask=empty)))
        p = 1.0 / (1.0 + np.exp(-model.logits(idx)))
        labels = (rng.random(n) < p).astype(np.int64)
        return [_ints_as_strings(labels)] + cols, labels, p

    return _write(path, rows, seed, CRITEO_COLUMNS, "\t", False, make_batch, "synth criteo", progress)


# ----------------------------------------------------------------------------- Avazu

AVAZU_START = _dt.date(2014, 10, 21)  # the real Avazu train set spans 2014-10-21 .. 2014-10-30
# (name, kind, vocab): kind "hex" = 8-hex-digit string, "int" = decimal id
AVAZU_FIELDS = [
    ("C1", "int", 7), ("banner_pos", "small", 7), ("site_id", "hex", 4000), ("site_domain", "hex", 5000),
    ("site_category", "hex", 26), ("app_id", "hex", 8000), ("app_domain", "hex", 500),
    ("app_category", "hex", 36), ("device_id", "hex", 100_000), ("device_ip", "hex", 200_000),
    ("device_model", "hex", 8000), ("device_type", "small", 5), ("device_conn_type", "small", 4),
    ("C14", "int", 2600), ("C15", "int", 8), ("C16", "int", 9), ("C17", "int", 430),
    ("C18", "small", 4), ("C19", "int", 68), ("C20", "int", 170), ("C21", "int", 60),
]


def write_avazu(path: str | Path, rows: int, seed: int = 0, progress: bool = False, signal: str = "pairwise") -> float:
    """Writes an Avazu CSV (header ``id,click,hour,...,C21``; hour = YYMMDDHH); returns the planted AUC."""
    vrng = np.random.default_rng([seed, 2])
    vocabs: list[pa.Array | np.ndarray] = []
    for _, kind, v in AVAZU_FIELDS:
        if kind == "hex":
            vocabs.append(_hex_vocab(vrng, v))
        elif kind == "small":
            vocabs.append(np.arange(v, dtype=np.int64))
        else:
            vocabs.append(_int_vocab(vrng, v, 100_000))
    # planted fields: 21 raw fields, hour-of-day (24), weekday (7), is-weekend (2)
    model = PlantedModel.make([v for _, _, v in AVAZU_FIELDS] + [24, 7, 2], seed, bias=-1.6, signal=signal)
    days = np.array([(AVAZU_START + _dt.timedelta(days=d)) for d in range(10)])
    day_codes = np.array([int(d.strftime("%y%m%d")) for d in days], dtype=np.int64)
    day_weekday = np.array([d.weekday() for d in days], dtype=np.int64)

    def make_batch(rng: np.random.Generator, n: int, start: int) -> tuple[list[pa.Array], np.ndarray, np.ndarray]:
        cols: list[pa.Array] = []
        idx: list[np.ndarray] = []
        for (_, kind, v), voc in zip(AVAZU_FIELDS, vocabs):
            r = zipf_ranks(rng, v, n)
            idx.append(r)
            cols.append(voc.take(pa.array(r)) if kind == "hex" else _ints_as_strings(voc[r]))
        day = rng.integers(0, 10, n)
        hod = rng.integers(0, 24, n)
        wd = day_weekday[day]
        idx += [hod, wd, (wd >= 5).astype(np.int64)]
        p = 1.0 / (1.0 + np.exp(-model.logits(idx)))
        labels = (rng.random(n) < p).astype(np.int64)
        ids = rng.integers(0, 2**63 - 1, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
        head = [_ints_as_strings(ids), _ints_as_strings(labels), _ints_as_strings(day_codes[day] * 100 + hod)]
        return head + cols, labels, p

    return _write(path, rows, seed, AVAZU_COLUMNS, ",", True, make_batch, "synth avazu", progress)


# ----------------------------------------------------------------------------- KDD12

KDD12_FIELDS = [  # (name, vocab) for the 11 feature columns, Impression first
    ("Impression", 6), ("DisplayURL", 30_000), ("AdID", 60_000), ("AdvertiserID", 5000), ("Depth", 3),
    ("Position", 3), ("QueryID", 200_000), ("KeywordID", 50_000), ("TitleID", 100_000),
    ("DescriptionID", 80_000), ("UserID", 200_000),
]


def write_kdd12(path: str | Path, rows: int, seed: int = 0, progress: bool = False, signal: str = "pairwise") -> float:
    """Writes a KDD Cup 2012 Track 2 ``training.txt`` (12 TSV columns); returns the planted AUC
    of P(Click > 0), the converter's label."""
    vrng = np.random.default_rng([seed, 3])
    vocabs = [_int_vocab(vrng, v, 10_000_000) for _, v in KDD12_FIELDS]
    vocabs[0] = np.arange(1, 7)
    model = PlantedModel.make([v for _, v in KDD12_FIELDS], seed, bias=-2.5, signal=signal)

    def make_batch(rng: np.random.Generator, n: int, start: int) -> tuple[list[pa.Array], np.ndarray, np.ndarray]:
        idx = [zipf_ranks(rng, v, n) for _, v in KDD12_FIELDS]
        depth = idx[4] + 1
        idx[5] = np.minimum(idx[5], depth - 1)  # Position <= Depth, as in the real logs
        impressions = vocabs[0][idx[0]]
        vals = [impressions, vocabs[1][idx[1]], vocabs[2][idx[2]], vocabs[3][idx[3]], depth, idx[5] + 1]
        vals += [vocabs[j][idx[j]] for j in range(6, 11)]
        p = 1.0 / (1.0 + np.exp(-model.logits(idx)))
        clicks = rng.binomial(impressions, p)
        p_any = 1.0 - (1.0 - p) ** impressions
        labels = (clicks > 0).astype(np.int64)
        return [_ints_as_strings(clicks)] + [_ints_as_strings(v) for v in vals], labels, p_any

    return _write(path, rows, seed, KDD12_COLUMNS, "\t", False, make_batch, "synth kdd12", progress)


WRITERS: dict[str, Callable[..., float]] = {"criteo": write_criteo, "avazu": write_avazu, "kdd12": write_kdd12}


def write(
    dataset: str, path: str | Path, rows: int, seed: int = 0, progress: bool = False, signal: str = "pairwise"
) -> float:
    """Writes ``rows`` synthetic rows of ``dataset`` to ``path`` (gzip if it ends in .gz); returns the
    planted AUC.  ``signal``: ``"pairwise"`` (the default) or ``"higher-order"`` (PlantedModel).

    Example::

        write("criteo", "data/raw/criteo.tsv.gz", 2_000_000, seed=0, signal="higher-order")
    """
    if dataset not in WRITERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    return WRITERS[dataset](path, rows, seed, progress=progress, signal=signal)
