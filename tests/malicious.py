"""A pickle payload for the checkpoint-safety tests."""
import os


class RunsCode:
    """Unpickling this runs ``touch marker`` through os.system: what a malicious checkpoint
    would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))
