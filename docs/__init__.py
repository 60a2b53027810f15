"""Generators for the documentation site (run by docs/hooks.py during `mkdocs build`) and its checks."""
