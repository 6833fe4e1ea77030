"""Caption dedup: exact copies, then near-duplicates at a cosine threshold, then a sample.

The definition (one, shared by the scalable search and the all-pairs reference):

1. Captions are ranked by their position in the input (files in the given order, then rows).
2. Exact copies (the same text after ``normalise``: case, whitespace and trailing
   punctuation folded) are collapsed onto their first occurrence before embedding.
3. Over the remaining unique captions, in rank order, a caption is a *near duplicate* when
   its cosine similarity to an earlier **kept** caption is ``>= threshold``; it then points
   at the most similar such kept caption (ties: the earliest). Otherwise it is kept. So the
   earliest member of a duplicate group is always kept, every removed caption points at a
   kept one, and the result does not depend on how the search is batched. (SemDeDup removes
   a caption similar to *any* earlier one, even a removed one; pointing only at kept ones
   avoids chains that remove captions unlike anything kept.)
4. An exact copy points at its first occurrence, or where that was itself removed as a near
   duplicate, at the caption it was removed for.
   Similarities are compared at ``TOL`` (1e-5) precision: ``>= threshold - TOL`` counts.
5. ``--n`` captions are drawn from the kept ones with a seeded generator (all when fewer).

Search (``near_duplicate_pairs``): spherical k-means splits the embeddings into clusters;
for each cluster only the clusters that can hold a match are compared, by the triangle
inequality on angles: ``angle(x, y) <= acos(threshold)`` needs ``angle(x, c_B) <=
acos(threshold) + radius_B``. That prunes without ever missing a pair, so the result is
exactly the all-pairs result (``all_pairs``), in blocks of bounded memory (never N x N).
When the embeddings do not cluster, it degrades to blocked all-pairs, never to a wrong
answer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

_SPACE = re.compile(r"\s+")
TOL = 1e-5  # similarities are compared at this precision (float32 sums differ by ~1e-7)


def normalise(text: str) -> str:
    """The text exact-copy detection compares: NFKC, lower case, one space, no end dots."""
    t = unicodedata.normalize("NFKC", text).lower().strip()
    return _SPACE.sub(" ", t).rstrip(" .!;,")


def text_hash(text: str) -> str:
    return hashlib.sha1(normalise(text).encode()).hexdigest()


@dataclass
class Pairs:
    """Similar pairs ``(i, j, sim)`` with ``i < j`` and the nearest similarity seen per item."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    sim: np.ndarray  # float32
    nn_sim: np.ndarray  # float32 (N,): max similarity to another item among those compared
    compared: int  # similarity entries computed (N*(N-1)/2 for all pairs)


def _as_unit(emb: np.ndarray) -> np.ndarray:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, dim), got {emb.shape}")
    return emb


def all_pairs(emb: np.ndarray, threshold: float) -> Pairs:
    """The reference: the full N x N similarity matrix (small N only)."""
    emb = _as_unit(emb)
    n = len(emb)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nn = sims.max(axis=1) if n > 1 else np.full(n, np.nan, np.float32)
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return Pairs(i.astype(np.int64), j.astype(np.int64), sims[i, j].astype(np.float32),
                 nn.astype(np.float32), n * (n - 1) // 2)  # fmt: skip


def spherical_kmeans(
    emb: np.ndarray, k: int, seed: int, iters: int = 15, block: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Unit centroids (k, dim) and each item's cluster, by cosine k-means (seeded)."""
    n = len(emb)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    cent = emb[np.sort(rng.choice(n, size=k, replace=False))].copy()
    assign = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        for s in range(0, n, block):
            assign[s : s + block] = np.argmax(emb[s : s + block] @ cent.T, axis=1)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, emb)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        new = np.where(empty[:, None], cent, sums / np.maximum(norms, 1e-12))
        if it and np.allclose(new, cent, atol=1e-6):
            break
        cent = new.astype(np.float32)
    for s in range(0, n, block):
        assign[s : s + block] = np.argmax(emb[s : s + block] @ cent.T, axis=1)
    return cent, assign


def near_duplicate_pairs(
    emb: np.ndarray,
    threshold: float,
    n_clusters: int | None = None,
    seed: int = 0,
    block: int = 2048,
) -> Pairs:
    """Every pair with cosine ``>= threshold``, exactly, without an N x N matrix (module doc).

    ``n_clusters`` (default ``~sqrt(N)``) and ``block`` change the speed, never the result.
    """
    emb = _as_unit(emb)
    n = len(emb)
    nn = np.full(n, -np.inf, dtype=np.float32)
    if n < 2:
        e = np.zeros(0, np.int64)
        return Pairs(e, e, np.zeros(0, np.float32), np.full(n, np.nan, np.float32), 0)
    k = n_clusters or max(1, int(round(np.sqrt(n))))
    cent, assign = spherical_kmeans(emb, k, seed)
    k = len(cent)
    own = np.einsum("nd,nd->n", emb, cent[assign])
    ang_own = np.arccos(np.clip(own, -1.0, 1.0))
    radius = np.full(k, -np.inf)
    np.maximum.at(radius, assign, ang_own)
    theta = float(np.arccos(np.clip(threshold, -1.0, 1.0)))
    margin = 1e-3  # radians: float32 rounding must never prune a true pair
    order = np.argsort(assign, kind="stable")
    starts = np.searchsorted(assign[order], np.arange(k + 1))
    members = [order[starts[c] : starts[c + 1]] for c in range(k)]
    out_i, out_j, out_s, compared = [], [], [], 0
    for a in range(k):
        rows_all = members[a]
        if len(rows_all) == 0:
            continue
        for r0 in range(0, len(rows_all), block):
            rows = rows_all[r0 : r0 + block]
            x = emb[rows]
            to_cent = np.arccos(np.clip(x @ cent.T, -1.0, 1.0)).min(axis=0)  # (k,)
            cand = np.nonzero(to_cent <= theta + radius + margin)[0]
            cand = cand[cand >= a]  # a pair across clusters is found from the lower one
            cols = np.concatenate([members[b] for b in cand]) if len(cand) else rows[:0]
            for c0 in range(0, len(cols), 4 * block):
                cc = cols[c0 : c0 + 4 * block]
                s = x @ emb[cc].T
                same = rows[:, None] == cc[None, :]
                s[same] = -np.inf
                compared += s.size - int(same.sum())
                nn[rows] = np.maximum(nn[rows], s.max(axis=1))
                nn[cc] = np.maximum(nn[cc], s.max(axis=0))  # cc holds no index twice
                ri, ci = np.nonzero(s >= threshold)
                gi, gj = rows[ri], cc[ci]
                # inside one cluster each pair shows up twice: keep it once, as i < j
                keep = (assign[gj] != a) | (gi < gj)
                gi, gj, gs = gi[keep], gj[keep], s[ri[keep], ci[keep]]
                lo, hi = np.minimum(gi, gj), np.maximum(gi, gj)
                out_i.append(lo)
                out_j.append(hi)
                out_s.append(gs.astype(np.float32))
    i = np.concatenate(out_i) if out_i else np.zeros(0, np.int64)
    j = np.concatenate(out_j) if out_j else np.zeros(0, np.int64)
    s = np.concatenate(out_s) if out_s else np.zeros(0, np.float32)
    # a pair of two different clusters a < b is only searched from a; dedupe regardless
    if len(i):
        uniq, first = np.unique(i * n + j, return_index=True)
        i, j, s = i[first], j[first], s[first]
    nn[~np.isfinite(nn)] = np.nan
    return Pairs(i.astype(np.int64), j.astype(np.int64), s, nn, compared // 2 or compared)


@dataclass
class DedupResult:
    """Per unique item (in rank order): kept or the kept item it duplicates."""

    kept: np.ndarray  # bool (N,)
    duplicate_of: np.ndarray  # int64 (N,), -1 when kept
    similarity: np.ndarray  # float32 (N,), NaN when kept
    nn_similarity: np.ndarray  # float32 (N,)
    compared: int


def resolve(n: int, pairs: Pairs) -> DedupResult:
    """Apply the greedy rule (module doc, step 3) to the similar pairs of ``n`` items."""
    kept = np.ones(n, dtype=bool)
    dup = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    if len(pairs.i):
        # by j, then by similarity descending (at TOL precision, so float rounding of two
        # search paths never reorders a tie), then by i: the first kept i wins
        quant = np.round(pairs.sim.astype(np.float64) / TOL).astype(np.int64)
        order = np.lexsort((pairs.i, -quant, pairs.j))
        pi, pj, ps = pairs.i[order], pairs.j[order], pairs.sim[order]
        bounds = np.flatnonzero(np.diff(pj)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(pj)], strict=True):
            j = pj[lo]
            for t in range(lo, hi):  # pj ascending: every earlier i is already decided
                if kept[pi[t]]:
                    kept[j], dup[j], sim[j] = False, pi[t], ps[t]
                    break
    return DedupResult(kept, dup, sim, pairs.nn_sim, pairs.compared)


def dedup(
    emb: np.ndarray,
    threshold: float,
    method: str = "clustered",
    n_clusters: int | None = None,
    seed: int = 0,
) -> DedupResult:
    """Near-duplicate removal over embeddings in rank order: ``clustered`` or ``all_pairs``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold {threshold} must be in (0, 1]")
    at = threshold - TOL  # float32 rounding must not decide a pair at the threshold
    if method == "all_pairs":
        pairs = all_pairs(emb, at)
    elif method == "clustered":
        pairs = near_duplicate_pairs(emb, at, n_clusters=n_clusters, seed=seed)
    else:
        raise ValueError(f"method {method!r}: clustered or all_pairs")
    return resolve(len(emb), pairs)


def sample(n_items: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random sample of ``n`` of ``n_items`` (all when fewer)."""
    if n >= n_items:
        return np.arange(n_items)
    return np.sort(np.random.default_rng(seed).choice(n_items, size=n, replace=False))
