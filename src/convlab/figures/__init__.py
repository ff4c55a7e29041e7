"""Every figure convlab draws, and the HTML report of a run: drawing only.

The numbers come from elsewhere (meta.json, RUN/evaluation.json, convlab.analysis,
lr_find); nothing here trains or evaluates a model. Importing this package sets up
matplotlib to draw to files (see base.py), so only code that draws imports it.

- base: save_figure, image_grid (the matplotlib setup)
- plots: training curves, confusion matrix, mistakes, the LR range test
- learned: kernels, linear templates, feature maps of a network
- report: a run's plots and its self-contained report.html
"""
from .base import image_grid, save_figure
from .learned import save_feature_maps, save_kernels, save_templates
from .plots import plot_confusion, plot_history, plot_lr_find, plot_mistakes
from .report import read_evaluation, write_report, write_run_plots

__all__ = ["image_grid", "save_figure", "save_feature_maps", "save_kernels", "save_templates",
           "plot_confusion", "plot_history", "plot_lr_find", "plot_mistakes", "read_evaluation",
           "write_report", "write_run_plots"]
