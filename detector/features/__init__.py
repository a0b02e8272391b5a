"""Per-principal window features: canonical events -> one row per (cluster, principal, window).

The modules, in data-flow order (docs/features.md describes every feature):

- :mod:`~detector.features.catalogue`: the features, their sentences, families, ATT&CK ids;
- :mod:`~detector.features.windows`: events -> window rows (counts and distinct values);
- :mod:`~detector.features.baseline`: what a principal did in the training range;
- :mod:`~detector.features.compare`: window rows -> feature rows against a baseline;
- :mod:`~detector.features.surprise`: feature rows -> the forest's inputs;
- :mod:`~detector.features.fit`: a baseline and cross-fitted features from training rows.

Nothing here reads the lake: ``detect`` reads a range once and hands frames over.
"""

from detector.features.baseline import Baseline, build_baseline, seen_values, unseen_principals
from detector.features.catalogue import (
    ATTACK,
    BY_NAME,
    CATALOGUE,
    DEFAULT_WINDOW,
    FAMILIES,
    FAMILY_OF,
    FEATURES,
    FEATURES_VERSION,
    INPUT_COLUMNS,
    KEYS,
    MODEL_INPUTS,
    RELATIVE,
    Feature,
)
from detector.features.compare import finish_features
from detector.features.fit import cross_fit_features, fit_baseline, fold_length
from detector.features.surprise import feature_surprises, model_inputs, tail_counts
from detector.features.windows import (
    align,
    check_window,
    empty_windows,
    request_rows,
    window_counts,
    window_schema,
)

__all__ = [
    "ATTACK",
    "BY_NAME",
    "CATALOGUE",
    "DEFAULT_WINDOW",
    "FAMILIES",
    "FAMILY_OF",
    "FEATURES",
    "FEATURES_VERSION",
    "INPUT_COLUMNS",
    "KEYS",
    "MODEL_INPUTS",
    "RELATIVE",
    "Baseline",
    "Feature",
    "align",
    "build_baseline",
    "check_window",
    "cross_fit_features",
    "empty_windows",
    "feature_surprises",
    "finish_features",
    "fit_baseline",
    "fold_length",
    "model_inputs",
    "request_rows",
    "seen_values",
    "tail_counts",
    "unseen_principals",
    "window_counts",
    "window_schema",
]
