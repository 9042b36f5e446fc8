"""lit_codegen: PPO for code generation with PyTorch Lightning."""

__version__ = "0.1.0"
