# All metadata is in setup.cfg; this file only lets old pip versions do editable installs.
from setuptools import setup

setup()
