"""Images and their measurements, one home for what the A/B comparison, the diagnosis and the command
line share: ``metrics`` (PSNR, SSIM, Laplacian variance, high-frequency energy), ``difference`` (the
heatmap of two renders, what changed between them), ``grid`` (labelled grids), ``table`` (the metrics
table of several images against a reference: rows, text, strict JSON) and ``files`` (base64 PNG, PNG
with infotext, a set of images saved together).  Host-free: numpy, PIL and scikit-image only.
"""
from lib_sdfix.imaging.difference import describe_change, difference_heatmap, heatmap, valid_heatmap_gain
from lib_sdfix.imaging.files import png_base64, png_with_infotext, save_image_set
from lib_sdfix.imaging.grid import compose_grid, fit_label
from lib_sdfix.imaging.metrics import (
    DetailReport,
    compare_detail,
    detail_ratio,
    high_frequency_energy,
    laplacian_variance,
    psnr,
    ssim,
)
from lib_sdfix.imaging.table import json_safe, metrics_table, text_table

__all__ = [
    "DetailReport", "compare_detail", "psnr", "ssim", "laplacian_variance", "high_frequency_energy", "detail_ratio",
    "difference_heatmap", "heatmap", "valid_heatmap_gain", "describe_change", "compose_grid", "fit_label",
    "metrics_table", "text_table", "json_safe", "png_base64", "png_with_infotext", "save_image_set",
]
