"""Evaluation of distilled students (issue 11): metric functions, FVD, the VBench adapter, the report.

video_metrics.py (weight-free metrics of a generated video: flicker, dynamic degree, warping error),
structure_metrics.py (metrics of a subject's mask track: consistency, fragmentation, area stability,
presence), fvd.py (Frechet video distance with a VideoMAE or StyleGAN-V I3D backbone),
vbench_adapter.py (runs `vbench` in its own virtual environment and reads its JSON back),
report.py (report.md / report.json / bar chart over runs).

Every metric documents its direction: "higher is better" or "lower is better" (`DIRECTIONS`).
Videos are uint8 numpy [F, H, W, 3] (RGB); masks are bool numpy [F, H, W].
"""
