"""The caches of FVE encoding: prompt-conditioned embeddings on disk, decoded vision features in memory
(and optionally on disk), and image digests."""
