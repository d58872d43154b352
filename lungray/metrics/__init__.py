"""Metrics as pure NumPy functions: :mod:`~lungray.metrics.classification` (accuracy, F1, AUC,
the per-class report) and :mod:`~lungray.metrics.segmentation` (per-image Dice/IoU from pixel
confusions). Core layer: they import nothing of lungray but :mod:`lungray.tracking`'s metric
names, so data, training and the report all score with the same code.

``from lungray import metrics as M`` gives the classification functions (the task most studies
run); segmentation metrics are imported from their module.
"""

from lungray.metrics.classification import (
    accuracy,
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    log_loss,
    macro_auc,
    macro_f1,
    missed_as_normal,
    per_class_prf,
    roc_auc_binary,
    roc_auc_ovr,
    sensitivity_specificity,
    weighted_f1,
)

from lungray.metrics.classification import __all__ as __all__  # noqa: E402,F401 - the same public names
