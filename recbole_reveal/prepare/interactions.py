"""Compact interaction storage, duplicate removal, k-core filtering and the output order.

Memory: one interaction costs 32 bytes (user index int32, item index int32, timestamp int64,
rating float64, review-spool offset int64) in ``array`` buffers; each distinct user / item id is
stored once (a ``str`` in a list plus a dict entry while parsing). Review texts are never kept in
memory: they go to a spool file on disk and are read back by offset when ``.review`` is written.
"""

import os
from array import array

import numpy as np


class InteractionLog:
    """Append-only columnar store of parsed interactions, in raw-file order."""

    def __init__(self):
        self.user_index, self.user_tokens = {}, []
        self.item_index, self.item_tokens = {}, []
        self.users, self.items = array("i"), array("i")
        self.times, self.ratings, self.offsets = array("q"), array("d"), array("q")

    def add(self, user, item, timestamp, rating, offset):
        u = self.user_index.get(user)
        if u is None:
            u = self.user_index[user] = len(self.user_tokens)
            self.user_tokens.append(user)
        i = self.item_index.get(item)
        if i is None:
            i = self.item_index[item] = len(self.item_tokens)
            self.item_tokens.append(item)
        self.users.append(u)
        self.items.append(i)
        self.times.append(timestamp)
        self.ratings.append(rating)
        self.offsets.append(offset)

    def __len__(self):
        return len(self.users)

    def columns(self):
        """numpy views ``(users, items, times, ratings, offsets)``; drops the parse-time dicts."""
        self.user_index = self.item_index = None
        return (np.frombuffer(self.users, dtype=np.int32), np.frombuffer(self.items, dtype=np.int32),
                np.frombuffer(self.times, dtype=np.int64), np.frombuffer(self.ratings, dtype=np.float64),
                np.frombuffer(self.offsets, dtype=np.int64))


def first_of_duplicates(users, items, times):
    """Mask keeping, of every repeated (user, item) pair, only its earliest interaction (smallest
    timestamp; equal timestamps: the earlier line of the raw file)."""
    n = len(users)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.lexsort((np.arange(n), times, items, users))
    su, si = users[order], items[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (su[1:] != su[:-1]) | (si[1:] != si[:-1])
    keep[order[first]] = True
    return keep


def k_core(users, items, mask, k, n_users, n_items):
    """Iterate "drop users and items with fewer than ``k`` interactions" until nothing changes.

    Returns ``(mask, rounds)``; ``rounds`` counts the passes, the last of which removed nothing.
    The result is the unique maximal sub-graph where every user and item has >= k interactions,
    whatever the order of removal.
    """
    mask = mask.copy()
    rounds = 0
    while True:
        rounds += 1
        u_deg = np.bincount(users[mask], minlength=n_users)
        i_deg = np.bincount(items[mask], minlength=n_items)
        new = mask & (u_deg[users] >= k) & (i_deg[items] >= k)
        if np.array_equal(new, mask):
            return mask, rounds
        mask = new


def token_ranks(tokens):
    """``rank[j]`` = position of ``tokens[j]`` in code-point order."""
    order = sorted(range(len(tokens)), key=tokens.__getitem__)
    rank = np.empty(len(tokens), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(tokens))
    return rank


def output_order(users, items, times, mask, user_tokens, item_tokens):
    """Indices of the kept interactions in output order: users by id (code-point order), each
    user's interactions by timestamp, equal timestamps by item id. Nothing depends on the raw
    file's line order, and RecBole's stable sort by (user, timestamp) keeps this order."""
    idx = np.flatnonzero(mask)
    user_rank, item_rank = token_ranks(user_tokens), token_ranks(item_tokens)
    order = np.lexsort((item_rank[items[idx]], times[idx], user_rank[users[idx]]))
    return idx[order]


class ReviewSpool:
    """Review texts on disk, one UTF-8 line each, in parse order; ``add`` returns the offset.

    Read back with ``os.pread`` (no memory map: mapped pages would count as the converter's
    resident memory). Record ``j`` ends where record ``j + 1`` starts, so offsets alone suffice.
    """

    def __init__(self, path):
        self.path = path
        self._f = open(path, "wb", buffering=1 << 20)
        self._pos = 0
        self._fd = None

    def add(self, text_bytes):
        offset = self._pos
        self._f.write(text_bytes)
        self._f.write(b"\n")
        self._pos += len(text_bytes) + 1
        return offset

    def open_for_reading(self):
        self._f.close()
        self._fd = os.open(self.path, os.O_RDONLY)

    def ends(self, offsets):
        """End offset (exclusive, without the newline) of each record, given all offsets in order."""
        ends = np.empty(len(offsets), dtype=np.int64)
        ends[:-1] = offsets[1:] - 1
        if len(offsets):
            ends[-1] = self._pos - 1
        return ends

    def get(self, offset, end):
        return os.pread(self._fd, end - offset, offset)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._f.closed:
            self._f.close()
        if os.path.exists(self.path):
            os.remove(self.path)
