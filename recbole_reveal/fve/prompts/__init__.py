"""Alg. 2 line 3: initial prompts from item metadata and review keywords (paper 4.3.3), the templates,
the prompt files, and the interaction-scope prompts."""
