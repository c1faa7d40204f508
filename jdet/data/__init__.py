"""Data: the raw Zalo format (zalo.py, annotations.py, report.py), video I/O (video.py), the
synthetic generator (synthetic.py, render.py), and the TFDS/grain input pipeline."""
