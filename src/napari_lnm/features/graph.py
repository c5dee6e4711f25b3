"""Graph (nuclear arrangement) features from nucleus centroids: Voronoi cells clipped to the tile,
Delaunay triangulation, minimum spanning tree, k-nearest-neighbour distances, neighbour counts in radii
and clustering — the global cell-graph features of Doyle et al. (2008) as in HistomicsTK's
``compute_global_cell_graph_features``, with lengths in µm and areas in µm².

Voronoi cells are clipped exactly to the tile rectangle (pixel edges, ``[-0.5, H-0.5] x [-0.5, W-0.5]``)
by adding the centroids' mirror images across the four tile sides: the cell of an original point in
that diagram is its Voronoi cell intersected with the rectangle. Cell areas and perimeters are sums
over the cell's ridges (triangles with the generator), so no per-cell Python loop is needed.
Centroids that coincide (to 1e-3 px) are merged. Fewer than 2 (or collinear) centroids give NaN where undefined.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import Delaunay, QhullError, Voronoi, cKDTree

from napari_lnm.errors import UserError

from .catalog import GRAPH_STATS, FeatureInfo, graph_summarise, summarise_columns, summary_infos

__all__ = ["graph_features", "graph_segments", "voronoi_cells", "delaunay_edges", "CATALOG", "RADII_UM", "KNN"]

GROUP = "graph"
#: Radii (µm) for neighbour counts.
RADII_UM = (10.0, 20.0, 30.0, 40.0, 50.0)
#: k for k-nearest-neighbour distances.
KNN = (1, 3, 5, 7)
#: Radius (µm) of the proximity graph whose clustering coefficient is reported.
CLUSTER_RADIUS_UM = 20.0
_MERGE_PX = 1e-3  # centroids closer than this (px) are one point
_BITSET_MAX_NODES = 4096  # clustering via adjacency bitsets up to this many nuclei (n²/8 bytes)
_SIDE_STEP = 4.0  # px between samples of a tile side when deciding which points to mirror

_MEASURES: list[tuple[str, str, str]] = [
    ("voronoi_area", "µm²", "area of the nucleus's Voronoi cell clipped to the tile"),
    ("voronoi_perimeter", "µm", "perimeter of the clipped Voronoi cell"),
    ("voronoi_max_chord", "µm", "longest distance between two vertices of the clipped Voronoi cell"),
    ("delaunay_edge", "µm", "length of each Delaunay triangulation edge"),
    ("delaunay_area", "µm²", "area of each Delaunay triangle"),
    ("mst_edge", "µm", "length of each minimum-spanning-tree edge (MST of the Delaunay graph)"),
]
_MEASURES += [(f"knn{k}_dist", "µm", f"distance from each nucleus to its {k}-th nearest neighbour") for k in KNN]
_MEASURES += [(f"knn{k}_mean", "µm", f"mean distance from each nucleus to its {k} nearest neighbours") for k in KNN if k > 1]
_MEASURES += [
    (f"neighbours_{r:g}um", "1", f"number of other nuclei within {r:g} µm of each nucleus") for r in RADII_UM
]
_MEASURES += [
    ("delaunay_degree", "1", "number of Delaunay neighbours of each nucleus"),
    ("clustering", "1", f"local clustering coefficient of each nucleus in the {CLUSTER_RADIUS_UM:g} µm proximity graph "
     "(nuclei with < 2 neighbours excluded)"),
]

CATALOG: list[FeatureInfo] = []
for _key, _unit, _what in _MEASURES:
    CATALOG += summary_infos(f"{GROUP}.{_key}", GROUP, _unit, _what + " (no outlier removal)", GRAPH_STATS)
CATALOG.append(
    FeatureInfo("graph.transitivity", GROUP, "1",
                f"global transitivity (3 x triangles / connected triples) of the {CLUSTER_RADIUS_UM:g} µm proximity graph")
)


def _unique_points(centroids: np.ndarray) -> np.ndarray:
    """Validate (n, 2) centroids and merge coincident ones (closer than about 1e-3 px), sorted (float64, row/col px)."""
    return _unique_points_tree(centroids)[0]


def _unique_points_tree(centroids: np.ndarray) -> tuple[np.ndarray, cKDTree | None]:
    """``_unique_points`` and a cKDTree of the result (None when there is no point)."""
    pts = np.asarray(centroids, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2)), None
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise UserError(f"centroids: expected an (n, 2) array of (row, col) px, got shape {pts.shape}")
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if pts.shape[0] < 2:
        pts = pts.copy()
        return pts, (cKDTree(pts) if pts.shape[0] else None)
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    tree = cKDTree(pts)
    pairs = tree.query_pairs(_MERGE_PX, output_type="ndarray")  # keeps Qhull well conditioned
    if pairs.size:
        keep = np.ones(pts.shape[0], dtype=bool)
        keep[pairs.max(axis=1)] = False
        pts = pts[keep]
        tree = cKDTree(pts)
    return pts, tree


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """The sorted unique values of a 1-D integer array (as ``np.unique``, by sorting)."""
    a = np.sort(a)
    if a.size > 1:
        a = a[np.r_[True, a[1:] != a[:-1]]]
    return a


def _check_shape(shape) -> tuple[int, int]:
    """The tile (rows, cols) from a shape tuple."""
    if len(shape) < 2 or shape[0] < 1 or shape[1] < 1:
        raise UserError(f"tile shape must be (rows, cols) >= 1, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _mirror(pts: np.ndarray, shape: tuple[int, int], tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The points plus their mirror images across each tile side, for the points that can own part of that side;
    returns (points, index of the original point each one mirrors).

    Each side is sampled every _SIDE_STEP px (ends included); d_k is the distance from sample k to its
    nearest point. On the interval between samples k and k+1 (length L) the nearest-point distance is at
    most R = (d_k + d_k+1 + L) / 2, so a point owning part of it lies within R + L/2 of the interval's
    midpoint. Only those points are mirrored: mirrors of the other points never claim pixels inside the
    tile, so leaving them out does not change any clipped cell.
    """
    lo = -0.5
    hr, hc = shape[0] - 0.5, shape[1] - 0.5
    inside = (pts[:, 0] > lo) & (pts[:, 0] < hr) & (pts[:, 1] > lo) & (pts[:, 1] < hc)
    if not inside.all():
        raise UserError("centroids must lie inside the tile")
    if tree is None:
        tree = cKDTree(pts)
    rows = np.r_[np.arange(lo, hr, _SIDE_STEP), hr]
    cols = np.r_[np.arange(lo, hc, _SIDE_STEP), hc]
    r, c = pts[:, 0], pts[:, 1]
    sides = (  # samples along the side (row, col), mirror of every point across it
        (np.c_[np.full(cols.size, lo), cols], np.c_[2 * lo - r, c]),
        (np.c_[np.full(cols.size, hr), cols], np.c_[2 * hr - r, c]),
        (np.c_[rows, np.full(rows.size, lo)], np.c_[r, 2 * lo - c]),
        (np.c_[rows, np.full(rows.size, hc)], np.c_[r, 2 * hc - c]),
    )
    samples = np.concatenate([sp for sp, _m in sides])
    dist = tree.query(samples)[0]
    mids, radii, side_of = [], [], []
    start = 0
    for s, (sp, _m) in enumerate(sides):
        d = dist[start : start + sp.shape[0]]
        start += sp.shape[0]
        length = np.hypot(*np.diff(sp, axis=0).T)
        mids.append(0.5 * (sp[1:] + sp[:-1]))
        radii.append(0.5 * (d[1:] + d[:-1]) + length + 1e-6)
        side_of.append(np.full(length.size, s))
    found = tree.query_ball_point(np.concatenate(mids), np.concatenate(radii), return_sorted=False)
    counts = np.fromiter(map(len, found), dtype=np.intp, count=len(found))
    idx = np.fromiter(itertools.chain.from_iterable(found), dtype=np.intp, count=int(counts.sum()))
    side = np.repeat(np.concatenate(side_of), counts)
    code = _sorted_unique(side * pts.shape[0] + idx)  # by side, then point
    side, near = np.divmod(code, pts.shape[0])
    parts = [pts] + [m[near[side == s]] for s, (_sp, m) in enumerate(sides)]
    owner = [np.arange(pts.shape[0])] + [near[side == s] for s in range(len(sides))]
    return np.concatenate(parts), np.concatenate(owner)


def _triangulate(pts: np.ndarray, aug: np.ndarray) -> tuple[np.ndarray | None, Delaunay | None]:
    """Delaunay simplices of ``pts`` (None when fewer than 3 or collinear) and the Delaunay triangulation
    of ``aug`` (``pts`` plus mirror points; None when Qhull fails).

    Two separate Qhull runs with the default options: an incremental run (pts, then the mirrors) would
    save one, but Qhull's incremental mode cannot use Qz/Qbb and so breaks ties between cocircular
    points differently, which changes the Delaunay features of lattice-like inputs.
    """
    simp = None
    if pts.shape[0] >= 3:
        try:
            simp = Delaunay(pts).simplices.astype(np.int64)
        except (QhullError, ValueError):
            simp = None
    try:
        return simp, Delaunay(aug)
    except (QhullError, ValueError):
        return simp, None


def _edges_of(simp: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangles (t, 3) and unique sorted edges (m, 2) from Delaunay simplices (empty for None)."""
    if simp is None or simp.shape[0] == 0:
        return np.zeros((0, 3), np.int64), np.zeros((0, 2), np.int64)
    e = np.concatenate([simp[:, [0, 1]], simp[:, [1, 2]], simp[:, [0, 2]]])
    code = _sorted_unique(np.minimum(e[:, 0], e[:, 1]) * n + np.maximum(e[:, 0], e[:, 1]))
    return simp, np.c_[code // n, code % n]


def _ridges(aug: np.ndarray, tri: Delaunay | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Finite Voronoi ridges of ``aug``: (point pairs (m, 2), start and end vertex ids (m,), vertices (v, 2)).

    Taken from the dual Delaunay triangulation ``tri`` of ``aug`` (computed when None; circumcentres of
    adjacent triangles), which keeps everything in arrays; falls back to ``scipy.spatial.Voronoi`` for
    degenerate triangulations.
    """
    if tri is None:
        try:
            tri = Delaunay(aug)
        except (QhullError, ValueError):
            return None
    simp = tri.simplices
    a, b, c = aug[simp[:, 0]], aug[simp[:, 1]], aug[simp[:, 2]]
    bx, by = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    cx, cy = c[:, 0] - a[:, 0], c[:, 1] - a[:, 1]
    d = 2.0 * (bx * cy - by * cx)
    scale = np.maximum(bx * bx + by * by, cx * cx + cy * cy)
    if np.all(np.abs(d) > 1e-9 * scale):
        b2, c2 = bx * bx + by * by, cx * cx + cy * cy
        cc = np.c_[a[:, 0] + (cy * b2 - by * c2) / d, a[:, 1] + (bx * c2 - cx * b2) / d]
        nb = tri.neighbors
        t, k = np.nonzero(nb > np.arange(simp.shape[0])[:, None])
        pairs = np.c_[simp[t, (k + 1) % 3], simp[t, (k + 2) % 3]]
        return pairs, t, nb[t, k], cc
    try:  # degenerate (zero-area) triangles: let Qhull's Voronoi handle them
        vor = Voronoi(aug)
    except (QhullError, ValueError):
        return None
    rv = np.asarray(vor.ridge_vertices, dtype=np.int64)
    ok = (rv >= 0).all(axis=1)
    return vor.ridge_points[ok], rv[ok, 0], rv[ok, 1], vor.vertices


def voronoi_cells(centroids: np.ndarray, shape, tree: cKDTree | None = None) -> dict[str, np.ndarray]:
    """Per unique centroid, its Voronoi cell clipped to the tile: ``area`` (px²), ``perimeter`` (px),
    ``max_chord`` (px), plus ``points`` (n, 2) and the cell ``segments`` (M, 2, 2) row/col px."""
    shape = _check_shape(shape)
    pts, own_tree = _unique_points_tree(centroids)
    return _cells_of_unique(pts, shape, own_tree)


def _cells_of_unique(
    pts: np.ndarray, shape: tuple[int, int], tree: cKDTree | None, simplices: list | None = None
) -> dict[str, np.ndarray]:
    """``voronoi_cells`` of already unique, sorted points (``_unique_points``) with their cKDTree; when
    ``simplices`` is a list (the features path), the Delaunay simplices of ``pts`` (or None) are appended
    to it and the display ``segments`` are not computed (None)."""
    n = pts.shape[0]
    empty = {"points": pts, "area": np.full(n, np.nan), "perimeter": np.full(n, np.nan),
             "max_chord": np.full(n, np.nan), "segments": np.zeros((0, 2, 2))}
    if n == 0:
        if simplices is not None:
            simplices.append(None)
        return empty
    aug, owner = _mirror(pts, shape, tree)
    simp, tri = _triangulate(pts, aug)
    if simplices is not None:
        simplices.append(simp)
    rid = _ridges(aug, tri) if tri is not None else None
    if rid is None:
        return empty
    rp, ia, ib, vv = rid
    va, vb = vv[ia], vv[ib]
    # incidences (cell, ridge) for cells of original points; their ridges are finite
    m0, m1 = rp[:, 0] < n, rp[:, 1] < n
    cell = np.concatenate([rp[m0, 0], rp[m1, 1]])
    a = np.concatenate([va[m0], va[m1]])
    b = np.concatenate([vb[m0], vb[m1]])
    p = pts[cell]
    tri = 0.5 * np.abs((a[:, 0] - p[:, 0]) * (b[:, 1] - p[:, 1]) - (a[:, 1] - p[:, 1]) * (b[:, 0] - p[:, 0]))
    seg_len = np.hypot(*(a - b).T)
    area = np.bincount(cell, tri, n)
    perim = np.bincount(cell, seg_len, n)
    # longest vertex-to-vertex distance per cell: pad each cell's (unique) vertex list
    vid = np.concatenate([ia[m0], ia[m1], ib[m0], ib[m1]])
    key = np.sort(np.concatenate([cell, cell]) * vv.shape[0] + vid)  # sorted by cell
    if key.size:
        key = key[np.r_[True, key[1:] != key[:-1]]]
    vcell = key // vv.shape[0]
    verts = vv[key % vv.shape[0]]
    counts = np.bincount(vcell, minlength=n)
    starts = np.cumsum(counts) - counts
    rank = np.arange(vcell.size) - starts[vcell]
    mx = int(counts.max()) if counts.size else 0
    pad = np.full((n, max(mx, 1), 2), np.nan)
    pad[vcell, rank] = verts
    dx = pad[:, :, None, 0] - pad[:, None, :, 0]
    dy = pad[:, :, None, 1] - pad[:, None, :, 1]
    d2 = dx * dx + dy * dy
    d2[np.isnan(d2)] = -1.0
    max_chord = np.sqrt(np.maximum(d2.max(axis=(1, 2)), 0.0))
    max_chord[counts == 0] = np.nan
    area[counts == 0] = np.nan
    perim[counts == 0] = np.nan
    if simplices is not None:  # features only: no display segments
        return {"points": pts, "area": area, "perimeter": perim, "max_chord": max_chord, "segments": None}
    # segments for display: every ridge of an original cell, except the tile border (point vs own mirror)
    disp = (np.minimum(rp[:, 0], rp[:, 1]) < n) & (owner[rp[:, 0]] != owner[rp[:, 1]]) & (np.hypot(*(va - vb).T) > 1e-9)
    segs = np.stack([va[disp], vb[disp]], axis=1)
    return {"points": pts, "area": area, "perimeter": perim, "max_chord": max_chord, "segments": segs}


def delaunay_edges(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delaunay triangles (t, 3) and unique edges (m, 2) of points; empty when fewer than 3 or collinear."""
    if pts.shape[0] < 3:
        return np.zeros((0, 3), np.int64), np.zeros((0, 2), np.int64)
    try:
        tri = Delaunay(pts).simplices.astype(np.int64)
    except (QhullError, ValueError):
        return np.zeros((0, 3), np.int64), np.zeros((0, 2), np.int64)
    n = pts.shape[0]
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]])
    code = np.unique(np.minimum(e[:, 0], e[:, 1]) * n + np.maximum(e[:, 0], e[:, 1]))
    return tri, np.c_[code // n, code % n]


def _mst_lengths(pts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Edge lengths (px) of the minimum spanning tree over ``edges`` (Delaunay); along the line when collinear."""
    n = pts.shape[0]
    if n < 2:
        return np.zeros(0)
    if edges.shape[0] == 0:  # 2 points or collinear: the MST joins neighbours along the line
        centred = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        srt = pts[np.argsort(centred @ vt[0], kind="stable")]
        return np.hypot(*np.diff(srt, axis=0).T)
    w = np.hypot(*(pts[edges[:, 0]] - pts[edges[:, 1]]).T)
    order = np.argsort(edges[:, 0], kind="stable")  # CSR layout (edges from _edges_of are sorted already)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(edges[:, 0], minlength=n), out=indptr[1:])
    g = sparse.csr_matrix((w[order], edges[order, 1], indptr), shape=(n, n))
    mst = minimum_spanning_tree(g, overwrite=True)
    return mst.data[mst.data > 0]


def _clustering(pairs: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Local clustering coefficients (NaN for degree < 2) and global transitivity of an undirected graph.

    ``pairs`` (m, 2) are the edges, each once. The common neighbours of the two ends of every edge are
    counted at once as popcounts of ANDed adjacency bitsets (a sparse A @ A for very large graphs).
    """
    if n == 0:
        return np.zeros(0), np.nan
    if pairs.shape[0] == 0:
        return np.full(n, np.nan), np.nan
    i, j = pairs[:, 0], pairs[:, 1]
    deg = (np.bincount(i, minlength=n) + np.bincount(j, minlength=n)).astype(np.float64)
    if n <= _BITSET_MAX_NODES:
        width = -(-n // 64) * 64
        adj = np.zeros((n, width), dtype=bool)
        adj[i, j] = True
        adj[j, i] = True
        bits = np.packbits(adj, axis=1).view(np.uint64)
        common = np.bitwise_count(bits[i] & bits[j]).sum(axis=1)  # triangles through each edge
        tri2 = np.bincount(i, common, n) + np.bincount(j, common, n)  # 2 x triangles through each node
    else:
        a = sparse.coo_matrix((np.ones(2 * i.size), (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
        tri2 = np.asarray((a @ a).multiply(a).sum(axis=1)).ravel()
    triples = deg * (deg - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        local = np.where(deg >= 2, tri2 / np.where(triples > 0, triples, 1), np.nan)
    tot = triples.sum()
    trans = float(tri2.sum() / tot) if tot > 0 else np.nan
    return local, trans


def _graph_stats_of_finite(m: np.ndarray) -> np.ndarray:
    """GRAPH_STATS of every column of an all-finite (n, k) array -> (k, 4), as ``graph_summarise``."""
    c = np.ascontiguousarray(m.T)  # rows contiguous: the same summation as a 1-D array
    mean = c.mean(axis=1)
    std = c.std(axis=1)
    vmax = c.max(axis=1)
    vmin = c.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        min_max = np.where(vmax > 0, vmin / np.where(vmax > 0, vmax, 1.0), np.nan)
        disorder = np.where(mean + std > 0, std / np.where(mean + std > 0, mean + std, 1.0), np.nan)
    return np.stack([mean, std, min_max, disorder], axis=1)


def _summarise_columns(m: np.ndarray) -> np.ndarray:
    """``graph_summarise`` of every column of an (n, k) array (rows = nuclei) -> (k, 4)."""
    return summarise_columns(m, 4, _graph_stats_of_finite, graph_summarise)


def graph_features(centroids: np.ndarray, shape, mpp: float) -> dict[str, float]:
    """The ``graph.*`` features of one tile from nucleus centroids (row, col px) at ``mpp`` µm/px."""
    mpp = float(mpp)
    if not mpp > 0:
        raise UserError(f"mpp must be > 0 µm/px, got {mpp}")
    shape = _check_shape(shape)
    pts, tree = _unique_points_tree(centroids)
    n = pts.shape[0]
    meas: dict[str, np.ndarray] = {}
    simplices: list = []
    cells = _cells_of_unique(pts, shape, tree, simplices)
    meas["voronoi_area"] = cells["area"] * mpp * mpp
    meas["voronoi_perimeter"] = cells["perimeter"] * mpp
    meas["voronoi_max_chord"] = cells["max_chord"] * mpp
    tri, edges = _edges_of(simplices[0], n)
    meas["delaunay_edge"] = np.hypot(*(pts[edges[:, 0]] - pts[edges[:, 1]]).T) * mpp if edges.size else np.zeros(0)
    if tri.shape[0]:
        a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
        meas["delaunay_area"] = 0.5 * np.abs(
            (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        ) * mpp * mpp
    else:
        meas["delaunay_area"] = np.zeros(0)
    meas["mst_edge"] = _mst_lengths(pts, edges) * mpp
    kmax = max(KNN)
    if n >= 2:
        kq = min(kmax + 1, n)
        dist, _ = tree.query(pts, k=kq)
        dist = dist.reshape(n, kq)[:, 1:] * mpp  # drop self; µm
    else:
        dist = np.zeros((n, 0))
    for k in KNN:
        meas[f"knn{k}_dist"] = dist[:, k - 1] if dist.shape[1] >= k else np.zeros(0)
    for k in KNN:
        if k > 1:
            meas[f"knn{k}_mean"] = dist[:, :k].mean(axis=1) if dist.shape[1] >= k else np.zeros(0)
    # neighbour counts in every radius and the proximity graph from one pair search
    if tree is not None:
        rmax_px = max(max(RADII_UM), CLUSTER_RADIUS_UM) / mpp
        sdm = tree.sparse_distance_matrix(tree, rmax_px, output_type="ndarray")
        pi, pj, pv = sdm["i"], sdm["j"], sdm["v"] * mpp
        off = pi != pj
        pi, pj, pv = pi[off], pj[off], pv[off]
    else:
        pi = pj = np.zeros(0, np.int64)
        pv = np.zeros(0)
    radii = np.sort(np.asarray(RADII_UM, dtype=np.float64))
    ring = np.searchsorted(radii, pv, side="left")  # the smallest radius r with pv <= r (radii.size: none)
    nr = radii.size + 1
    per_ring = np.bincount(pi * nr + ring, minlength=n * nr).reshape(n, nr)
    within = np.cumsum(per_ring[:, : radii.size], axis=1).astype(np.float64)  # other nuclei within each radius
    for k, r in enumerate(radii):
        meas[f"neighbours_{r:g}um"] = within[:, k]
    meas["delaunay_degree"] = (
        np.bincount(edges.ravel(), minlength=n).astype(np.float64) if edges.size else np.zeros(0)
    )
    sel = (pv <= CLUSTER_RADIUS_UM) & (pi < pj)
    pairs = np.c_[pi[sel], pj[sel]]
    local, trans = _clustering(pairs, n)
    meas["clustering"] = local
    # summaries: the per-nucleus measurements (length n) as one matrix, the others one by one
    keys = [key for key, _u, _w in _MEASURES]
    per_node = [key for key in keys if meas[key].shape == (n,)] if n else []
    stats = {}
    if per_node:
        for key, row in zip(per_node, _summarise_columns(np.stack([meas[key] for key in per_node], axis=1))):
            stats[key] = row
    out: dict[str, float] = {}
    for key in keys:
        vals = stats[key] if key in stats else graph_summarise(meas[key])
        for (suffix, _d), val in zip(GRAPH_STATS, vals):
            out[f"{GROUP}.{key}_{suffix}"] = float(val)
    out["graph.transitivity"] = trans
    return out


def graph_segments(centroids: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi (clipped to the tile, tile border omitted) and Delaunay segments for display, (M, 2, 2) row/col px."""
    cells = voronoi_cells(centroids, shape)
    pts = cells["points"]
    _tri, edges = delaunay_edges(pts)
    dsegs = np.stack([pts[edges[:, 0]], pts[edges[:, 1]]], axis=1) if edges.size else np.zeros((0, 2, 2))
    return cells["segments"], dsegs
