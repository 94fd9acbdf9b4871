#!/usr/bin/env python
"""Fit the AGN X-ray luminosity function to the cosmic X-ray background. See ``python train.py --help``."""

from popsynth.cli import main
from popsynth.console import exit_fast

if __name__ == "__main__":
    exit_fast(main())  # flushes and runs the atexit handlers, skips torch's slow teardown
