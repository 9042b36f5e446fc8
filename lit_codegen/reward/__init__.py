"""Reward: sandboxed execution of candidate programs against APPS tests."""
