"""Models: the tiny local Qwen2 model, loading helpers and the critic (value model)."""
