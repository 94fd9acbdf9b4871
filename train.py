#!/usr/bin/env python
"""Fit the AGN X-ray luminosity function to the cosmic X-ray background. See ``python train.py --help``."""

import sys

from popsynth.cli import main

if __name__ == "__main__":
    sys.exit(main())
