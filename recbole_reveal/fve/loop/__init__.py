"""Alg. 2 of the paper as a resumable loop: the stages (init, encode, train, feedback, critic), the run
record that makes them resumable, the context every stage reads and the per-cycle table."""
