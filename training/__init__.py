"""Training for the package's networks (DMD3C and SelfDC), run from a checkout.

``python -m training.<command>``. Imports the runtime package (networks, projection, metrics,
depth I/O) so that what training sees and what evaluation scores is what the node computes; the
runtime never imports this package.
"""
