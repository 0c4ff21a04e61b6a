"""Step 1 of Alg. 2: the prompt-conditioned vision encoder e^{v_X} <- VLM(p^v, Prompt_X), its chat layout,
image reading, caches, interaction-level encoding, data-parallel workers and VLM residency."""
