"""APPS data: loading, prompt templates, preprocessing and the Lightning data modules."""
