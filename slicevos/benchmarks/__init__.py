"""Baselines and comparisons that only benchmarks use: nearest-key copy and ITK morphological
contour interpolation (the yardsticks for propagation), and the nnU-Net baseline with its
resampling and tiling. Inference code never imports this package."""
