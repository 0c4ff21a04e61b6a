"""The critic's generation backends: the base types (items, answers, the answer log), the local
transformers backend, an OpenAI-compatible endpoint, and the factory that picks one."""
