"""Cells, not pictures: finding the white cells in a field (finder.py) and their records.

The finder is classical stain-space segmentation (OpenCV and NumPy only, no model weights):
docs/cells.md gives the method and the figures it reaches on other labs' fields.
"""
