"""A model on disk or S3: the forest as arrays, the baseline as Parquet, a validated card.

:class:`Model` is what ``detect train`` writes and ``detect score`` reads: the fitted
:class:`~detector.model.scorer.Scorer`, the principals'
:class:`~detector.features.Baseline`, the feature window and what it was trained on::

    MODEL_DIR/model.json                    model card; written last, names the files below
    MODEL_DIR/model-<version>.npz           the forest's trees as plain arrays
    MODEL_DIR/baseline-<version>-*.parquet  per-principal baseline statistics

Guarantees:

- ``model.json`` is the commit point: every file is written atomically, the card last, so a
  crash while training leaves the previous card and its files in place.
- A model directory may hold other files (notes, other tools' output): saving only ever
  writes, replaces or removes files whose names are exactly ours (:data:`OWN_FILE`).
- Loading trusts nothing: the card is checked key by key (types, ranges, file names) before
  any value is used, every file's sha256 must match the card, and the trees are checked
  (:mod:`detector.model.forest`). Any failure is a :class:`ModelError` with one line.
- The card cannot be edited unseen: every key but ``created_at`` and those naming the files
  (``model_version``, ``files``, ``baseline.files``, which the digests and the file names
  already tie down) is also recorded, as canonical JSON, inside the forest file, whose
  sha256 the card holds (:func:`card_record`). A card that differs from its record (a
  threshold raised, another window, a feature list edited by hand) is refused, naming the
  keys that differ. Cards of format 2 (saved before the record) are loaded with a warning
  that their keys are unchecked. This guards against edits and accidents, not against a
  writer of the model folder who rewrites the forest file and its digest too: that is a new
  model, as any training writes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import platform
import re
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from detector import __version__
from detector.errors import UsageError
from detector.features import FEATURES, FEATURES_VERSION, MODEL_INPUTS, Baseline, model_inputs
from detector.model.forest import ArrayForest, ForestFileError
from detector.model.scorer import BANDS, Scorer
from detector.storage import Location
from detector.timeparse import iso_utc

log = logging.getLogger(__name__)

CARD_NAME = "model.json"
#: 3: the forest file records the card (:func:`card_record`); 2: it does not (still loaded).
CARD_FORMAT = 3
LEGACY_CARD_FORMAT = 2
#: Card keys left out of its record: those naming the files (the record is inside one) and
#: the time of saving (so that saving one model twice writes the same files, same version).
UNRECORDED = ("model_version", "files", "created_at")
DEFAULT_MODEL_DIR = "models"
#: The only scorer kind this version saves and loads.
BACKEND = "iforest"

#: Share of training windows above the threshold. A quiet cluster (30 principals active
#: around the clock: ~4,300 windows a day) then gets about 4 model alerts a day.
DEFAULT_ALERT_RATE = 0.001

#: Baseline tables saved as Parquet next to the model (population stats live in the card).
BASELINE_TABLES = ("principals", "seen", "actions", "tails")
#: Columns scoring reads from each baseline table (checked on load).
BASELINE_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "principals": {
        "cluster": pl.String(),
        "principal": pl.String(),
        "windows": pl.UInt32(),
        "hour_counts": pl.List(pl.UInt32()),
    },
    "seen": {
        "cluster": pl.String(),
        "principal": pl.String(),
        "dimension": pl.String(),
        "value": pl.String(),
    },
    "actions": {"principal_kind": pl.String(), "action": pl.String(), "windows": pl.UInt32()},
    "tails": {
        "level": pl.String(),
        "key": pl.String(),
        "feature": pl.String(),
        "bin": pl.Int32(),
        "n_ge": pl.UInt32(),
    },
}
#: A model file younger than this is never removed by another training's clean-up: it
#: may belong to a training still writing its files (its card comes last).
PRUNE_AFTER = timedelta(minutes=30)
#: The principals table's per-feature columns (``median_<feature>``, ``p99_<feature>``).
_STAT_PREFIXES = ("median_", "p99_")
#: Names of the files a model directory holds for us; nothing else is ever touched.
OWN_FILE = re.compile(
    r"^(model-(?P<v1>[0-9a-f]{16})\.npz|baseline-(?P<v2>[0-9a-f]{16})-"
    rf"(?:{'|'.join(BASELINE_TABLES)})\.parquet)$"
)
_VERSION = re.compile(r"^[0-9a-f]{16}\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


class ModelError(UsageError):
    """A model cannot be used; the message says why in one line and what to do."""


class ModelNotFound(ModelError):
    pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    return buf.getvalue()


def library_versions() -> dict[str, str]:
    """Versions of what trained the model (scikit-learn only if it is loaded)."""
    import pyarrow

    versions = {
        "python": platform.python_version(),
        "audit-detector": __version__,
        "numpy": np.__version__,
        "polars": pl.__version__,
        "pyarrow": pyarrow.__version__,
    }
    if "sklearn" in sys.modules:
        versions["scikit-learn"] = sys.modules["sklearn"].__version__
    return versions


def fingerprint(X: np.ndarray) -> str:
    """sha256 of the training matrix: two models trained on the same rows share it."""
    return _sha256(np.ascontiguousarray(X, dtype=np.float64).tobytes())


@dataclass(frozen=True)
class Model:
    """A fitted scorer, its baseline and what it was trained on (see module docstring).

    ``version`` is the hash of the model files once saved (``"unsaved"`` before; callers
    that score with a model they never save name it with :meth:`named`).
    """

    scorer: Scorer
    baseline: Baseline
    window: timedelta
    params: dict[str, Any] = field(default_factory=dict)
    #: What it was trained on: range, windows, principals... (``training`` in the card).
    training: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the training matrix (``data_fingerprint`` in the card).
    fingerprint: str = ""
    version: str = "unsaved"
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return BACKEND

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    @property
    def severity_cutoffs(self) -> dict[str, float]:
        return self.scorer.severity_cutoffs

    def named(self, version: str) -> Model:
        """The same model under another version label (``cold-start``, ``evaluate``)."""
        return replace(self, version=version)

    @property
    def trained_since(self) -> datetime | None:
        return _instant(self.training.get("since"))

    @property
    def trained_until(self) -> datetime | None:
        return _instant(self.training.get("until"))

    def matrix(self, features: pl.DataFrame) -> np.ndarray:
        """The scorer's input for feature rows (see :func:`detector.features.model_inputs`)."""
        return model_inputs(features, self.baseline).to_numpy()

    def score(self, features: pl.DataFrame) -> np.ndarray:
        """Anomaly scores of feature rows (higher = more unusual)."""
        if features.height == 0:
            return np.zeros(0)
        return self.scorer.anomaly_score(self.matrix(features))

    def severity(self, scores: np.ndarray) -> list[str | None]:
        """Severity band of each anomaly score (``None`` below the threshold)."""
        return self.scorer.severity(scores)

    # ----------------------------------------------------------------- save
    def save(self, model_dir: str) -> Model:
        """Write the model files, then the card; return the saved model (version and card).

        Files of models older than the one this replaces are removed afterwards (the
        replaced one stays, for a reader that loaded its card just before). Only files
        named like ours are ever removed.
        """
        loc = Location.of(model_dir)
        previous = _current_version(loc)
        # Everything the card says but the file names and digests, recorded in the forest
        # file first (those come after: the names carry the hash of the files).
        card: dict[str, Any] = {
            "card_format": CARD_FORMAT,
            "backend": BACKEND,
            "params": self.params,
            "features": list(FEATURES),
            "model_inputs": list(MODEL_INPUTS),
            "features_version": FEATURES_VERSION,
            "window_seconds": int(self.window.total_seconds()),
            "log_transform": self.scorer.log_transform,
            "threshold": self.scorer.threshold,
            "threshold_method": self.params.get("threshold_method"),
            "alert_rate": self.params.get("alert_rate"),
            "severity_cutoffs": self.scorer.severity_cutoffs,
            "training_scores": {"mean": self.scorer.score_mean, "std": self.scorer.score_std},
            "baseline": {
                "principals": self.baseline.principals.height,
                "population": self.baseline.population.to_dicts(),
            },
            "training": self.training,
            "data_fingerprint": self.fingerprint,
            "libraries": library_versions(),
        }
        tables = {name: _parquet(getattr(self.baseline, name)) for name in BASELINE_TABLES}
        # The tables' digests are in the record too: the card's own digests of them could
        # be rewritten with a table (found by review), the record only with the forest file.
        card["baseline"]["sha256"] = {name: _sha256(data) for name, data in tables.items()}
        card = json.loads(json.dumps(card))  # as a reader will see it (tuples become lists...)
        blob = self.scorer.trees_bytes(record=card_record(card))
        version = _sha256(blob + b"".join(tables.values()))[:16]
        files = {f"model-{version}.npz": blob}
        files.update({f"baseline-{version}-{name}.parquet": data for name, data in tables.items()})
        for name, data in files.items():
            loc.put_atomic(loc.path(name), data)
        card = {
            "card_format": CARD_FORMAT,
            "model_version": version,
            "created_at": iso_utc(datetime.now(UTC)),
            **card,
        }
        card["baseline"] = {
            "files": {name: f"baseline-{version}-{name}.parquet" for name in BASELINE_TABLES},
            **card["baseline"],
        }
        card["files"] = {name: _sha256(data) for name, data in files.items()}
        loc.put_atomic(loc.path(CARD_NAME), (json.dumps(card, indent=2) + "\n").encode())
        # Another training into the same folder (a manual run beside the nightly job) may
        # have written its card since ours, or be about to: its files are kept, the ones
        # the card names now and any written in the last PRUNE_AFTER.
        keep = {version, previous, _current_version(loc)}
        for path in loc.glob("*"):
            m = OWN_FILE.match(path.rsplit("/", 1)[-1])
            if m and (m["v1"] or m["v2"]) not in keep and _older_than(loc, path, PRUNE_AFTER):
                # One request a file, so a refused delete is seen (s3fs's bulk delete
                # reports none); the model is saved whatever happens here.
                try:
                    loc.fs.rm_file(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning(
                        "old model files in %s kept: cannot delete %s (%s); the role needs "
                        "s3:DeleteObject on the model store",
                        model_dir,
                        path.rsplit("/", 1)[-1],
                        type(exc).__name__,
                    )
                    break
        return replace(self, version=version, card=card)

    # ----------------------------------------------------------------- load
    @classmethod
    def load(cls, model_dir: str) -> Model:
        """Read and verify a saved model; raises :class:`ModelError` with a one-line reason."""
        loc = Location.of(model_dir)
        card_path = loc.path(CARD_NAME)
        if not loc.exists(card_path):
            raise ModelNotFound(f"no model in {model_dir}")
        try:
            card = json.loads(_read(loc, card_path))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelError(f"model card {card_path} is not valid JSON: {exc}") from None
        check_card(card, model_dir)
        blobs: dict[str, bytes] = {}
        for name, digest in card["files"].items():
            path = loc.path(name)
            if not loc.exists(path):
                raise ModelError(
                    f"model file {name} named by {CARD_NAME} is missing in {model_dir}"
                )
            data = _read(loc, path)
            if _sha256(data) != digest:
                raise ModelError(
                    f"model file {name} does not match the sha256 in {CARD_NAME} (modified or "
                    "corrupt); refusing to load it: retrain with `detect train`"
                )
            blobs[name] = data
        forest_name = f"model-{card['model_version']}.npz"
        try:
            forest, record = ArrayForest.read(blobs[forest_name])
        except ForestFileError as exc:
            raise ModelError(f"{exc} in {model_dir}; retrain with `detect train`") from None
        check_record(card, record, forest_name, model_dir)
        for name, digest in (card["baseline"].get("sha256") or {}).items():
            held = blobs.get(card["baseline"]["files"].get(name, ""))
            if held is None or _sha256(held) != digest:
                raise ModelError(
                    f"model baseline table {name} in {model_dir} is not the one the model was "
                    "trained with (edited since); refusing to load it: retrain with `detect train`"
                )
        if forest.n_features != len(MODEL_INPUTS):
            raise ModelError(
                f"model in {model_dir} scores {forest.n_features} inputs, this version "
                f"computes {len(MODEL_INPUTS)}; retrain with `detect train`"
            )
        base = card["baseline"]
        try:
            tables = {
                name: pl.read_parquet(io.BytesIO(blobs[base["files"][name]]))
                for name in BASELINE_TABLES
            }
            population = pl.DataFrame(
                base["population"],
                schema={"feature": pl.String, "median": pl.Float64, "p99": pl.Float64},
            )
        except (pl.exceptions.PolarsError, OSError, TypeError, ValueError) as exc:
            raise ModelError(f"model baseline in {model_dir} is unreadable ({exc})") from None
        for name, cols in BASELINE_COLUMNS.items():
            schema = tables[name].schema
            lacking = [c for c in cols if c not in schema]
            if lacking:
                raise ModelError(
                    f"model baseline table {name} in {model_dir} lacks {', '.join(lacking)}; "
                    "retrain with `detect train`"
                )
            wrong = [c for c, t in cols.items() if schema[c] != t] + [
                c for c, t in schema.items() if c.startswith(_STAT_PREFIXES) and t != pl.Float64
            ]
            if wrong:
                raise ModelError(
                    f"model baseline table {name} in {model_dir} holds {', '.join(wrong)} of "
                    "the wrong type; retrain with `detect train`"
                )
        scores = card.get("training_scores") or {}
        scorer = Scorer(
            forest=forest,
            log_transform=bool(card.get("log_transform", card["params"].get("log_transform"))),
            threshold=float(card["threshold"]),
            severity_cutoffs={b: float(card["severity_cutoffs"][b]) for b in BANDS},
            score_mean=float(scores.get("mean", 0.0)),
            score_std=float(scores.get("std", 0.0)),
        )
        return cls(
            scorer=scorer,
            baseline=Baseline(**tables, population=population),
            window=timedelta(seconds=int(card["window_seconds"])),
            params=dict(card["params"]),
            training=dict(card.get("training") or {}),
            fingerprint=str(card.get("data_fingerprint", "")),
            version=card["model_version"],
            card=card,
        )


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _older_than(loc: Location, path: str, age: timedelta) -> bool:
    """True when ``path`` was last written more than ``age`` ago (False when unknown)."""
    try:
        info = loc.fs.info(path)
    except OSError:
        return False
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(stamp, datetime):
        written = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    elif _number(stamp):
        written = datetime.fromtimestamp(float(stamp), UTC)
    else:
        return False
    return datetime.now(UTC) - written > age


def _current_version(loc: Location) -> str | None:
    try:
        version = json.loads(_read(loc, loc.path(CARD_NAME))).get("model_version")
    except (FileNotFoundError, ValueError, AttributeError, UnicodeDecodeError):
        return None
    return version if isinstance(version, str) and _VERSION.match(version) else None


def _read(loc: Location, path: str) -> bytes:
    with loc.fs.open(path, "rb") as fh:
        return fh.read()


# --------------------------------------------------------------------------- card checks
def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_card(card: Any, model_dir: str) -> None:
    """Raise :class:`ModelError` unless ``card`` is a card this version can use.

    Checked before any value is used: required keys and their types, file names (only our
    own names: a card must not point at other files), sha256 digests, the window, the
    threshold and severity bands (anomaly scores lie in (0, 1]; bands strictly increase
    from the threshold), and that the features are the ones this version computes.
    """

    def bad(why: str) -> ModelError:
        return ModelError(
            f"model card in {model_dir} is invalid: {why}; retrain with `detect train`"
        )

    if not isinstance(card, dict):
        raise bad("not a JSON object")
    required = (
        "card_format",
        "model_version",
        "features",
        "files",
        "params",
        "backend",
        "window_seconds",
        "threshold",
        "severity_cutoffs",
        "baseline",
    )
    missing = [k for k in required if k not in card]
    if missing:
        raise bad(f"it lacks {', '.join(missing)}")
    if card["card_format"] not in (CARD_FORMAT, LEGACY_CARD_FORMAT):
        raise ModelError(
            f"model card format {card['card_format']!r} is not one of the supported "
            f"{LEGACY_CARD_FORMAT} and {CARD_FORMAT}; retrain with `detect train`"
        )
    if card["backend"] != BACKEND:
        raise ModelError(f"model backend {card['backend']!r} is not available here")
    version = card["model_version"]
    if not isinstance(version, str) or not _VERSION.match(version):
        raise bad("model_version is not 16 hex digits")
    files = card["files"]
    if not isinstance(files, dict) or not files:
        raise bad("files is not an object naming the model files")
    for name, digest in files.items():
        m = OWN_FILE.match(name)
        if not m or (m["v1"] or m["v2"]) != version:
            raise bad(f"it names a file that is not one of this model's ({name!r})")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise bad(f"the sha256 of {name} is not 64 hex digits")
    if f"model-{version}.npz" not in files:
        raise bad("it names no forest file")
    base = card["baseline"]
    if not isinstance(base, dict) or not isinstance(base.get("files"), dict):
        raise bad("baseline is not an object with files")
    for name in BASELINE_TABLES:
        if base["files"].get(name) not in files:
            raise bad(f"baseline table {name} is not one of the files it lists")
        if base["files"][name] != f"baseline-{version}-{name}.parquet":
            raise bad(f"baseline table {name} is read from another table's file")
    digests = base.get("sha256", {})  # recorded since 2026-12-02; older cards have none
    if not isinstance(digests, dict) or not all(
        name in BASELINE_TABLES and isinstance(d, str) and _SHA256.match(d)
        for name, d in digests.items()
    ):
        raise bad("baseline sha256 is not an object of 64-hex-digit digests of its tables")
    population = base.get("population")
    if not isinstance(population, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("feature"), str)
        and _number(r.get("median"))
        and _number(r.get("p99"))
        for r in population
    ):
        raise bad("baseline population is not a list of {feature, median, p99}")
    if not isinstance(card["params"], dict):
        raise bad("params is not an object")
    transform = card.get("log_transform", card["params"].get("log_transform"))
    if transform is not None and not isinstance(transform, bool):
        raise bad(f"log_transform {transform!r} is not true or false")  # bool("false") is True
    for key in ("training", "training_scores"):
        if key in card and not isinstance(card[key], dict):
            raise bad(f"{key} is not an object")
    if not all(_number(v) for v in (card.get("training_scores") or {}).values()):
        raise bad("training_scores holds a value that is not a number")
    seconds = card["window_seconds"]
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 60 <= seconds <= 86_400:
        raise bad(f"window_seconds {seconds!r} is not whole seconds between 60 and 86400")
    threshold = card["threshold"]
    if not _number(threshold) or not 0.0 < threshold <= 1.0:
        raise bad(f"threshold {threshold!r} is not an anomaly score in (0, 1]")
    cuts = card["severity_cutoffs"]
    if not isinstance(cuts, dict) or set(cuts) != set(BANDS):
        raise bad(f"severity_cutoffs must name exactly {', '.join(BANDS)}")
    values = [cuts[b] for b in BANDS]
    if not all(_number(v) for v in values):
        raise bad("severity_cutoffs holds a value that is not a number")
    if values[0] != threshold or any(b <= a for a, b in itertools.pairwise(values)):
        raise bad("severity_cutoffs do not rise strictly from the threshold")
    _check_features(card, model_dir)


def card_record(card: dict[str, Any]) -> bytes:
    """The record of ``card`` kept in its forest file: canonical JSON of every key but
    :data:`UNRECORDED` and ``baseline.files``."""
    kept = {k: v for k, v in card.items() if k not in UNRECORDED}
    if isinstance(kept.get("baseline"), dict):
        kept["baseline"] = {k: v for k, v in kept["baseline"].items() if k != "files"}
    return _canonical(kept).encode()


def check_record(
    card: dict[str, Any], record: bytes | None, forest_name: str, model_dir: str
) -> None:
    """Refuse a card that is not the one its forest file recorded (see module docstring).

    A card of format 2 has no record to compare: it is loaded, with a warning.
    """
    if record is None:
        if card["card_format"] != LEGACY_CARD_FORMAT:
            raise ModelError(
                f"model card in {model_dir} is format {card['card_format']} but {forest_name} "
                "holds no record of it (replaced or tampered); retrain with `detect train`"
            )
        log.warning(
            "model %s in %s was saved before cards were recorded in the model file "
            "(card format %d): its threshold, severity_cutoffs, window_seconds, "
            "log_transform, baseline population and training range are used unchecked; "
            "retrain with `detect train` to have them checked",
            card["model_version"],
            model_dir,
            LEGACY_CARD_FORMAT,
        )
        return
    if card_record(card) == record:
        return
    try:
        saved = json.loads(record)
    except (ValueError, UnicodeDecodeError, RecursionError):
        saved = None
    if not isinstance(saved, dict):
        raise ModelError(
            f"model file {forest_name} in {model_dir} holds a record of its card that is not "
            "a JSON object; retrain with `detect train`"
        )
    changed = _changed(json.loads(card_record(card)), saved)
    raise ModelError(
        f"model card in {model_dir} is not the one saved with {forest_name} "
        f"({', '.join(changed[:5]) or 'a value'} changed: edited by hand or tampered); "
        "refusing to load it: retrain with `detect train`"
    )


def _changed(ours: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """The keys whose values differ, as dotted paths into objects (``severity_cutoffs.low``)."""
    out = []
    for key in sorted(set(ours) | set(saved), key=str):
        if key not in ours or key not in saved:
            out.append(key)
        elif isinstance(ours[key], dict) and isinstance(saved[key], dict):
            out += [f"{key}.{sub}" for sub in _changed(ours[key], saved[key])]
        elif _canonical(ours[key]) != _canonical(saved[key]):
            out.append(key)
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _check_features(card: dict[str, Any], model_dir: str) -> None:
    theirs_f, theirs_in = card["features"], card.get("model_inputs") or []
    if not isinstance(theirs_f, list) or not isinstance(theirs_in, list):
        raise ModelError(f"model card in {model_dir} is invalid: features are not lists")
    same = (
        theirs_f == list(FEATURES)
        and theirs_in == list(MODEL_INPUTS)
        and card.get("features_version") == FEATURES_VERSION
    )
    if same:
        return
    theirs = {str(x) for x in (*theirs_f, *theirs_in)}
    ours = set(FEATURES) | set(MODEL_INPUTS)
    detail = []
    if ours - theirs:
        detail.append(f"missing {', '.join(sorted(ours - theirs)[:3])}")
    if theirs - ours:
        detail.append(f"unknown {', '.join(sorted(theirs - ours)[:3])}")
    if not detail:
        detail.append(
            f"features version {card.get('features_version')} vs {FEATURES_VERSION}"
            if card.get("features_version") != FEATURES_VERSION
            else "different order"
        )
    raise ModelError(
        f"model in {model_dir} was trained on other features than this version computes "
        f"({'; '.join(detail)}); retrain with `detect train`"
    )
