"""Checkpoints: safe loading (no code runs on load), atomic writing, the checks before a run
uses one, and the conversion of the released code's checkpoints."""
