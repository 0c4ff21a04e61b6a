"""Step 3 of Alg. 2: Result_X, the backbone's rankings of the validation users, per-item statistics and
the items whose prompts are rewritten."""
