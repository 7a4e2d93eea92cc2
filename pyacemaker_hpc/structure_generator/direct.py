"""Choosing ``n`` structures that cover a descriptor space (step 1 and step 4).

Why not random: a mutation pool is lopsided (many near-duplicates of easy cells, few
rare ones), and random picks reproduce the lopsidedness. Two explicit alternatives:

* ``DirectSelector`` - DIRECT (Qi et al., npj Comput. Mater. 10, 43 (2024)):
  standardise -> PCA -> weight PCs by explained variance -> BIRCH into n clusters ->
  the points nearest each cluster centre. Objective: stratified coverage, every region
  of feature space (cluster) contributes, however few its members.
* ``EntropySelector`` - ``objective: maximize_entropy``: maximise the log-determinant
  of an RBF kernel over the selected set (a determinantal point process / D-optimal
  design; log det K is the differential entropy of a Gaussian process over the set, up
  to constants). Greedy maximisation is the standard (1-1/e)-approximation of this
  submodular objective; done with an incremental Cholesky it costs O(N n) per pick.

Both spend picks on the extent of the pool rather than on its density: measured on a
2,000-cell Cu mutation pool (benchmarks/direct_sampling.py) they reach ~1.7x more of each
PC's range than random picks and halve to sixth the covering radius, while random picks
stay closer to more pool points (they sample the dense near-duplicate families, e.g.
pure strains of 2-atom cells, in proportion). For training data that is the intent.

Both are deterministic for a seed (the seed orders BIRCH's insertion / picks the first
point). ``pca_space``, ``coverage`` (density-weighted: share of the pool near a pick),
``feature_coverage_score`` (DIRECT's per-PC extent score) and ``fill_distance`` (covering
radius) measure the result for benchmarks and tests.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DescriptorCfg


# ----------------------------------------------------------------------------------------
def pca_space(X: np.ndarray, pca_variance: float = 0.95):
    """Standardise the columns of ``X`` and project on the PCs explaining ``pca_variance``
    of the variance. Returns ``(Z, pca)``: scores (n, m) and the fitted sklearn Pipeline
    (``pca.transform(X_new)``; ``pca[-1].explained_variance_ratio_``)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"descriptor matrix must be 2-D, got {X.shape}")
    n_comp = None if pca_variance >= 1.0 or X.shape[0] < 2 else float(pca_variance)
    pipe = Pipeline([("scale", StandardScaler()), ("pca", PCA(n_components=n_comp, svd_solver="full"))])
    Z = pipe.fit_transform(X)
    return Z, pipe


def coverage(Z: np.ndarray, selected_idx, radius: float) -> float:
    """Fraction of pool points within ``radius`` (Euclidean, in Z) of a selected point."""
    Z = np.asarray(Z, dtype=np.float64)
    idx = np.asarray(selected_idx, dtype=int)
    if len(Z) == 0:
        return 0.0
    if len(idx) == 0:
        return 0.0
    d, _ = cKDTree(Z[idx]).query(Z, k=1)
    return float(np.mean(d <= radius))


def feature_coverage_score(Z: np.ndarray, selected_idx, n_bins: int = 100) -> float:
    """DIRECT's feature coverage score (Qi et al. 2024): per PC, the fraction of the
    histogram bins (``n_bins`` over the pool's range) occupied by the pool that the
    selection also occupies; averaged over the PCs. Density-blind: it rewards reaching
    the whole extent of each PC, where ``coverage`` rewards being near many pool points."""
    Z = np.asarray(Z, dtype=np.float64)
    idx = np.asarray(selected_idx, dtype=int)
    scores = []
    for col in Z.T:
        lo, hi = float(col.min()), float(col.max())
        if hi <= lo:
            continue
        edges = np.linspace(lo, hi, n_bins + 1)
        n_all = np.count_nonzero(np.histogram(col, bins=edges)[0])
        n_sel = np.count_nonzero(np.histogram(col[idx], bins=edges)[0])
        scores.append(n_sel / n_all)
    return float(np.mean(scores)) if scores else 1.0


def fill_distance(Z: np.ndarray, selected_idx) -> float:
    """Largest distance from a pool point to its nearest selected point (lower = better
    covered; the covering radius of the selection)."""
    Z = np.asarray(Z, dtype=np.float64)
    d, _ = cKDTree(Z[np.asarray(selected_idx, dtype=int)]).query(Z, k=1)
    return float(d.max())


def _farthest_fill(Z: np.ndarray, chosen: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """Add points farthest from the chosen ones (max-min) until there are ``n``."""
    chosen = list(dict.fromkeys(int(i) for i in chosen))
    N = len(Z)
    if not chosen:
        chosen = [int(rng.integers(N))]
    dmin = np.full(N, np.inf)
    for i in chosen:
        dmin = np.minimum(dmin, np.linalg.norm(Z - Z[i], axis=1))
    dmin[chosen] = -np.inf
    while len(chosen) < n:
        j = int(np.argmax(dmin))
        chosen.append(j)
        dmin = np.minimum(dmin, np.linalg.norm(Z - Z[j], axis=1))
        dmin[chosen] = -np.inf
    return chosen


def _trivial(X: np.ndarray, n: int):
    N = len(X)
    if n <= 0:
        return np.zeros(0, dtype=int)
    if n >= N:
        return np.arange(N)
    return None


# ----------------------------------------------------------------------------------------
class DirectSelector:
    """DIRECT: PCA (``pca_variance``) -> PCs weighted by explained-variance ratio ->
    BIRCH into ``n // k_per_cluster`` clusters -> the ``k_per_cluster`` points nearest each
    cluster's centroid; short selections are topped up max-min."""

    def __init__(self, pca_variance: float = 0.95, k_per_cluster: int = 1,
                 threshold_init: float = 0.5, branching_factor: int = 50):
        self.pca_variance = pca_variance
        self.k_per_cluster = int(k_per_cluster)
        self.threshold_init = threshold_init
        self.branching_factor = branching_factor
        self.last_info: dict = {}
        self.last_labels: np.ndarray | None = None

    def weighted_space(self, X: np.ndarray) -> np.ndarray:
        Z, pipe = pca_space(X, self.pca_variance)
        return Z * pipe[-1].explained_variance_ratio_

    def _birch(self, W: np.ndarray, n_clusters: int):
        """BIRCH with the threshold lowered until there are >= n_clusters subclusters
        (maml's rule: threshold *= n_sub / n_clusters), then global agglomerative step."""
        from sklearn.cluster import Birch

        # threshold in units of the data's spread, so the rule works whatever the scale
        scale = float(np.sqrt(np.mean(np.sum((W - W.mean(0)) ** 2, axis=1)))) or 1.0
        thr = self.threshold_init * scale
        for _ in range(60):
            model = Birch(threshold=thr, n_clusters=None, branching_factor=self.branching_factor).fit(W)
            n_sub = len(model.subcluster_centers_)
            if n_sub >= n_clusters or thr < 1e-9 * scale:
                break
            thr *= 0.9 * n_sub / n_clusters
        n_final = min(n_clusters, n_sub)
        model.set_params(n_clusters=n_final)
        model.partial_fit()  # global clustering of the subclusters only (no refit)
        labels = model.predict(W)
        self.last_info = {"threshold": thr, "n_subclusters": n_sub, "n_clusters": n_final}
        return labels

    def select(self, X: np.ndarray, n: int, seed: int) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        triv = _trivial(X, n)
        if triv is not None:
            return triv
        rng = np.random.default_rng(seed)
        W = self.weighted_space(X)
        k = max(1, min(self.k_per_cluster, n))
        n_clusters = max(1, n // k)
        order = rng.permutation(len(W))  # BIRCH depends on insertion order: the seed sets it
        labels = np.empty(len(W), dtype=int)
        labels[order] = self._birch(W[order], n_clusters)
        self.last_labels = labels  # cluster of every pool point (diagnostics)
        chosen: list[int] = []
        for lab in np.unique(labels):
            members = np.flatnonzero(labels == lab)
            centre = W[members].mean(0)
            d = np.linalg.norm(W[members] - centre, axis=1)
            chosen.extend(members[np.argsort(d, kind="stable")[:k]].tolist())
        chosen = chosen[:n]
        if len(chosen) < n:
            chosen = _farthest_fill(W, chosen, n, rng)
        return np.array(sorted(set(chosen)), dtype=int)


class EntropySelector:
    """Greedy maximum of log det K_S, K = exp(-|z_i - z_j|^2 / (2 h^2)) in the
    standardised-PCA space.

    Bandwidth ``h``: ``"knn"`` (default) = median distance from a pool point to its
    (N/n)-th nearest neighbour, the radius of a ball holding the share of the pool that
    each of the n picks stands for; ``"median"`` = median pairwise distance (the usual
    heuristic), or a number. Measured on clustered pools, the median-distance kernel is
    so wide that log det rewards the pool's extremes and covers its dense regions worse
    than random picks; the n-matched bandwidth keeps the repulsion local (see README).
    """

    def __init__(self, pca_variance: float = 0.95, bandwidth="knn", jitter: float = 1e-8):
        if not (bandwidth in ("knn", "median") or (isinstance(bandwidth, (int, float)) and bandwidth > 0)):
            raise ValueError(f"bandwidth must be 'knn', 'median' or a positive number, got {bandwidth!r}")
        self.pca_variance = pca_variance
        self.bandwidth_mode = bandwidth
        self.jitter = jitter

    def bandwidth(self, Z: np.ndarray, n: int) -> float:
        """Kernel width for choosing ``n`` of the rows of ``Z`` (deterministic)."""
        from scipy.spatial.distance import pdist

        Z = np.asarray(Z, dtype=np.float64)
        N = len(Z)
        if not isinstance(self.bandwidth_mode, str):
            return float(self.bandwidth_mode)
        rng = np.random.default_rng(0)
        sub = np.arange(N) if N <= 2000 else np.sort(rng.choice(N, 2000, replace=False))
        if self.bandwidth_mode == "median" or N < 3:
            h = float(np.median(pdist(Z[sub]))) if len(sub) > 1 else 1.0
        else:
            k = int(min(N - 1, max(2, round(N / max(n, 1)))))
            d, _ = cKDTree(Z).query(Z[sub], k=k + 1)
            h = float(np.median(d[:, -1]))
        return h if h > 0 else 1.0

    def _kernel(self, Z: np.ndarray, A: np.ndarray, h: float) -> np.ndarray:
        d2 = np.maximum(np.sum(Z ** 2, 1)[:, None] + np.sum(A ** 2, 1)[None, :] - 2.0 * Z @ A.T, 0.0)
        return np.exp(-d2 / (2.0 * h * h))

    def objective_value(self, Z: np.ndarray, idx) -> float:
        """log det (K_S + jitter I) for the rows ``idx`` of ``Z``; the bandwidth is the one
        ``select`` would use for ``len(idx)`` picks from all of Z, so values of different
        selectors of the same size are comparable (higher = more diverse)."""
        Z = np.asarray(Z, dtype=np.float64)
        idx = np.asarray(idx, dtype=int)
        if len(idx) == 0:
            return 0.0
        K = self._kernel(Z[idx], Z[idx], self.bandwidth(Z, len(idx))) + self.jitter * np.eye(len(idx))
        sign, logdet = np.linalg.slogdet(K)
        return float(logdet) if sign > 0 else float("-inf")

    def select_in_space(self, Z: np.ndarray, n: int, seed: int) -> np.ndarray:
        """Greedy log-det in a given space (incremental Cholesky, Chen et al. 2018)."""
        Z = np.asarray(Z, dtype=np.float64)
        triv = _trivial(Z, n)
        if triv is not None:
            return triv
        N = len(Z)
        h = self.bandwidth(Z, n)
        rng = np.random.default_rng(seed)
        C = np.zeros((n, N))                   # row t: t-th column of the incremental Cholesky
        d2 = np.full(N, 1.0 + self.jitter)     # conditional variance = exp(log-det gain)
        dmin = np.full(N, np.inf)              # distance to the nearest chosen point
        chosen: list[int] = []
        j = int(rng.integers(N))               # K_ii is constant: the seed picks the start
        for t in range(n):
            chosen.append(j)
            dj = np.sqrt(d2[j])
            kj = self._kernel(Z, Z[j:j + 1], h)[:, 0]
            e = (kj - C[:t].T @ C[:t, j]) / dj
            C[t] = e
            d2 = d2 - e * e
            d2[chosen] = -np.inf
            dmin = np.minimum(dmin, np.linalg.norm(Z - Z[j], axis=1))
            if t + 1 == n:
                break
            best = d2.max()
            if best <= self.jitter * 1e-3:      # only duplicates left: cover the rest max-min
                return np.array(sorted(set(_farthest_fill(Z, chosen, n, rng))), dtype=int)
            # gains equal to machine precision (points many h from all picks): farthest wins
            tied = np.flatnonzero(d2 >= best - 1e-12)
            j = int(tied[np.argmax(dmin[tied])])
        return np.array(sorted(chosen), dtype=int)

    def select(self, X: np.ndarray, n: int, seed: int) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        triv = _trivial(X, n)
        if triv is not None:
            return triv
        Z, _ = pca_space(X, self.pca_variance)
        return self.select_in_space(Z, n, seed)


class RandomSelector:
    """Uniform random choice without replacement: the baseline."""

    def select(self, X: np.ndarray, n: int, seed: int) -> np.ndarray:
        triv = _trivial(np.asarray(X), n)
        if triv is not None:
            return triv
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(len(X), size=n, replace=False))


def make_selector(objective: str, cfg: DescriptorCfg | None = None):
    """``distillation.step1_direct_sampling.objective`` -> a Selector, settings from a
    DescriptorCfg (pca_variance, k_per_cluster)."""
    pv = getattr(cfg, "pca_variance", 0.95)
    if objective == "direct":
        return DirectSelector(pca_variance=pv, k_per_cluster=getattr(cfg, "k_per_cluster", 1))
    if objective == "maximize_entropy":
        return EntropySelector(pca_variance=pv)
    if objective == "random":
        return RandomSelector()
    raise ValueError(f"unknown selection objective {objective!r} (direct | maximize_entropy | random)")
