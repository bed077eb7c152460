"""The main job on the embedded data: `make demo`.

The embedded dataset generator and the Mask R-CNN demo run are not available yet
(planned in the downstream-suite issue). This script says so instead of pretending.
"""
import sys

if __name__ == '__main__':
    print('make demo: the embedded-data demo is not yet available; '
          'the environment in .venv is set up and checked.')
    sys.exit(0)
