"""Calibration: observers and the hooks that feed them."""

from quantwise.calibrate.observers import OBSERVERS, Observer, make_observer

__all__ = ["OBSERVERS", "Observer", "make_observer"]
