"""Seeded k-means (Lloyd's algorithm) in torch, deterministic for a seed on CPU and on GPU.

Used by MISSRec to find its "interest tokens" (clusters of the items' projected text and image
features). The reference code ran a mini-batch k-means from ``torchpq``, which needs cupy and a GPU;
this one runs wherever torch runs:

- initial centroids are ``n_clusters`` distinct points drawn by a private CPU generator seeded with
  ``seed`` (the same draw on every device, and the global random stream is left untouched);
- each iteration assigns every point to its nearest centroid and moves each centroid to the mean of
  its points; a centroid that loses all its points stays where it was;
- it stops after ``n_iter`` iterations or when no assignment changes, and returns the centroids with
  the assignment of every point to them.

Distances and sums are computed in chunks of rows, so memory stays at about ``chunk_elements``
floats per step whatever the number of points and clusters.
"""

from typing import NamedTuple

import torch


class KMeansResult(NamedTuple):
    centroids: torch.Tensor     # [n_clusters, dim]
    assignment: torch.Tensor    # [n_points], long, index of each point's nearest centroid


def kmeans(points, n_clusters, n_iter=5, seed=0, chunk_elements=2**24):
    """Cluster the rows of ``points`` ([n_points, dim] float) into ``n_clusters`` groups."""
    if points.dim() != 2 or not points.is_floating_point():
        raise ValueError(f"kmeans needs a 2-D float tensor of points, got shape {tuple(points.shape)} "
                         f"and dtype {points.dtype}")
    n_points = points.size(0)
    if not 1 <= n_clusters <= n_points:
        raise ValueError(f"kmeans needs 1 <= n_clusters <= n_points, got {n_clusters} clusters for "
                         f"{n_points} points")
    if n_iter < 1:
        raise ValueError(f"kmeans needs n_iter >= 1, got {n_iter}")
    points = points.detach()
    rows = max(1, chunk_elements // max(n_clusters, points.size(1)))
    generator = torch.Generator().manual_seed(int(seed))
    first = torch.randperm(n_points, generator=generator)[:n_clusters].to(points.device)
    centroids = points[first].clone()
    assignment = None
    for _ in range(n_iter):
        new_assignment = nearest_centroid(points, centroids, rows)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums, counts = cluster_sums(points, assignment, n_clusters, rows)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return KMeansResult(centroids, nearest_centroid(points, centroids, rows))


def nearest_centroid(points, centroids, rows):
    """Index of the nearest centroid (Euclidean) of every point; ties go to the lower index."""
    squared_norms = (centroids * centroids).sum(1)
    nearest = []
    for chunk in points.split(rows):
        # ||x - c||^2 without the ||x||^2 term, which is the same for every centroid
        nearest.append((squared_norms - 2 * chunk @ centroids.T).argmin(1))
    return torch.cat(nearest)


def cluster_sums(points, assignment, n_clusters, rows, one_hot=None):
    """Per-cluster sums of the points and point counts.

    On CUDA, ``index_add_`` accumulates with atomics in no fixed order (not bit-reproducible), so the
    sums there are one-hot matrix products (``one_hot=None`` picks by device), which are; on CPU
    ``index_add_`` runs in a fixed order and is cheaper.
    """
    sums = points.new_zeros(n_clusters, points.size(1))
    counts = points.new_zeros(n_clusters)
    if one_hot is None:
        one_hot = points.is_cuda
    if one_hot:
        clusters = torch.arange(n_clusters, device=points.device)
        for chunk, labels in zip(points.split(rows), assignment.split(rows)):
            members = (labels.unsqueeze(1) == clusters).to(points.dtype)
            sums += members.T @ chunk
            counts += members.sum(0)
    else:
        sums.index_add_(0, assignment, points)
        counts.index_add_(0, assignment, torch.ones_like(assignment, dtype=points.dtype))
    return sums, counts
