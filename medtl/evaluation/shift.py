"""How far new images are from a run's training images, in the trained model's feature space.

A run keeps a `FeatureReference` in its folder (`reference.npz`, written at the end of training): a seeded
sample of the pooled backbone features of its training images and of its validation images (L2-normalised),
each validation image's distance to the training sample, and the split-conformal calibration scores of
validation (evaluation/conformal.py). With it, and without the training data:

- per image (`unlike_scores`): the distance of the image's features to its K-th nearest training feature
  (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors"), as a percentile of the
  validation images' distances: validation images were not trained on, so for an image like them the
  percentile is uniform on 0..100. The flag ("unlike the training images") is raised above `FLAG_QUANTILE` of
  the validation distances (the finite-sample quantile; the largest of them when validation has fewer than
  99 images), so about 1 % of images like the training images are flagged.
- per data set (`dataset_shift`): a domain classifier (logistic regression on the features, cross-validated
  AUC) that tries to tell the new images from the training sample, with a permutation p-value; the same
  statistic for the run's validation images against the training sample is the reference (training images'
  own features can differ a little from unseen images' once a model has fitted them). The verdict comes from
  the same test between the new images and the validation images, which are exchangeable with images like the
  training images: "shifted" when its p-value is at most `ALPHA`.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtl.core.errors import MedtlError
from medtl.core.io import atomic_write

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.npz"  # in the run folder
REFERENCE_VERSION = 1
SAMPLE = 2000  # training (and validation) images kept in the reference, drawn with the run's seed
K = 5  # the K-th nearest training feature gives an image's distance
FLAG_QUANTILE = 0.99  # of the validation images' distances: above it, an image is "unlike the training images"
ALPHA = 0.05  # the data-set test's level
PERMUTATIONS = 49  # p-values in steps of 1/50; a few seconds on 2 CPUs
PER_SIDE = 1000  # images per side of a domain classifier at most
DIMS = 32  # principal components the domain classifier sees
MIN_IMAGES = 10  # per side of a domain classifier
NOT_AVAILABLE = (f"not available: the run was made before medtl kept {REFERENCE_FILE} in its folder (train it again "
                 "to get shift scores and referral)")
KEYS = ("version", "train", "val", "val_distances", "cal_scores", "k")


def normalized(feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def knn_distance(bank: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Euclidean distance of each (normalised) row of `x` to its k-th nearest row of `bank`."""
    bank, x = bank.astype(np.float32), x.astype(np.float32)
    k = max(1, min(k, len(bank)))
    out = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), 512):  # (512, n) distances at a time
        chunk = x[start:start + 512]
        d2 = (chunk ** 2).sum(1)[:, None] + (bank ** 2).sum(1)[None] - 2 * chunk @ bank.T
        out[start:start + 512] = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0))
    return out


@dataclass
class FeatureReference:
    """What shift and referral need about a run's images, kept in its folder (see the module's doc)."""

    train: np.ndarray  # (n, D) float16, normalised features of a seeded sample of training images
    val: np.ndarray  # (m, D) float16, the same for validation images
    val_distances: np.ndarray  # (m,) each validation image's K-th nearest training distance
    cal_scores: np.ndarray  # split-conformal nonconformity scores of every validation image (1 - p(true class))
    k: int = K

    @classmethod
    def build(cls, train_feats: np.ndarray, val_feats: np.ndarray, cal_scores: np.ndarray,
              k: int = K) -> "FeatureReference":
        train = normalized(train_feats).astype(np.float16)
        val = normalized(val_feats).astype(np.float16)
        return cls(train, val, knn_distance(train, val, k), np.asarray(cal_scores, dtype=np.float64), k)

    @property
    def cutoff(self) -> float:
        """The distance above which an image is flagged: the finite-sample FLAG_QUANTILE of validation's."""
        d = np.sort(self.val_distances)
        return float(d[min(len(d), math.ceil((len(d) + 1) * FLAG_QUANTILE)) - 1])

    def save(self, path: str | Path) -> Path:
        arrays = {"version": np.array(REFERENCE_VERSION), "train": self.train, "val": self.val,
                  "val_distances": self.val_distances, "cal_scores": self.cal_scores, "k": np.array(self.k)}
        return atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureReference":
        """The record at `path`; MedtlError (one line) when it is not one medtl wrote."""
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [key for key in KEYS if key not in z.files]
                if missing:
                    raise ValueError(f"no {', '.join(missing)}")
                ref = cls(z["train"], z["val"], z["val_distances"], z["cal_scores"], int(z["k"]))
                version = int(z["version"])
        except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise _damaged(path, exc) from exc
        if version != REFERENCE_VERSION:
            raise _damaged(path, ValueError(f"version {version}, this medtl reads {REFERENCE_VERSION}"))
        ref.check(path)
        return ref

    def check(self, path: str | Path) -> None:
        t, v = self.train, self.val
        bad = ("train or val is not a 2-D float array" if t.ndim != 2 or v.ndim != 2 or t.dtype.kind != "f"
               or v.dtype.kind != "f" else
               "train and val have different feature sizes" if t.shape[1] != v.shape[1] else
               "empty train or val sample" if not len(t) or not len(v) else
               "val_distances does not match val" if self.val_distances.shape != (len(v),) else
               "cal_scores is not a 1-D array" if self.cal_scores.ndim != 1 else
               "non-finite values" if not (np.isfinite(t).all() and np.isfinite(v).all()
                                           and np.isfinite(self.val_distances).all()) else None)
        if bad:
            raise _damaged(path, ValueError(bad))


def _damaged(path: str | Path, exc: BaseException) -> MedtlError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return MedtlError(f"{path} is not a feature reference medtl wrote ({reason}); delete it to predict without "
                      "shift scores and referral, or train the run again")


def load_reference(run_dir: str | Path) -> FeatureReference | None:
    """The run's reference, or None for a run made before medtl kept one (logged once by the caller)."""
    path = Path(run_dir) / REFERENCE_FILE
    return FeatureReference.load(path) if path.exists() else None


def check_features(reference: FeatureReference, feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[1] != reference.train.shape[1]:
        raise ValueError(f"features of shape {feats.shape}; the reference has {reference.train.shape[1]} per image")
    return normalized(feats)


def unlike_scores(reference: FeatureReference, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(percentile 0..100 of each image's distance among the validation images' distances, flag: above the
    cut-off `reference.cutoff`) for pooled backbone features (N, D) of new images."""
    d = knn_distance(reference.train, check_features(reference, feats), reference.k)
    ranked = np.sort(reference.val_distances)
    percentile = 100.0 * np.searchsorted(ranked, d, side="left") / len(ranked)
    return percentile, d > reference.cutoff


def dataset_shift(reference: FeatureReference, feats: np.ndarray, seed: int = 0,
                  permutations: int = PERMUTATIONS) -> dict:
    """The data-set test (see the module's doc): AUC and p-value of new images vs the training sample, of
    the run's validation images vs the training sample (the reference), and of new vs validation images
    (the verdict)."""
    new = check_features(reference, feats)
    if len(new) < MIN_IMAGES or len(reference.val) < MIN_IMAGES:
        return {"available": False, "verdict": f"not available: the test needs {MIN_IMAGES} images on each side "
                f"({len(new)} new, {len(reference.val)} validation images in the reference)"}
    train, val = reference.train.astype(np.float32), reference.val.astype(np.float32)
    basis = _principal(train, min(DIMS, len(train) - 1, train.shape[1]))
    tests = {"new_vs_train": (new, train), "validation_vs_train": (val, train), "new_vs_validation": (new, val)}
    out: dict = {"available": True, "statistic": "domain classifier AUC (5-fold cross-validated logistic regression "
                 f"on {basis.shape[1]} principal components), permutation p-value ({permutations} permutations)",
                 "images": len(new)}
    for i, (name, (a, b)) in enumerate(tests.items()):
        out[name] = domain_auc(a @ basis, b @ basis, np.random.default_rng([seed, i]), permutations)
    out["shifted"] = out["new_vs_validation"]["p_value"] <= ALPHA
    out["verdict"] = _verdict(out)
    return out


def _verdict(out: dict) -> str:
    t, r, v = out["new_vs_train"], out["validation_vs_train"], out["new_vs_validation"]
    against = (f"AUC {t['auc']:.3f} against the training images, {r['auc']:.3f} for the run's own validation "
               f"images; against validation AUC {v['auc']:.3f}, p {v['p_value']:.3f}")
    if out["shifted"]:
        return f"shifted: a classifier tells these images from the run's images ({against})"
    return f"like the training images: no difference found at p <= {ALPHA} ({against})"


def _principal(x: np.ndarray, dims: int) -> np.ndarray:
    """(D, dims) principal axes of the training sample: the same projection for every test and permutation."""
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:max(1, dims)].T.astype(np.float32)


def domain_auc(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, permutations: int) -> dict:
    """Cross-validated AUC of a logistic regression telling `a` from `b` (equal, seeded samples of at most
    PER_SIDE each) and its permutation p-value, (1 + #null AUCs >= AUC) / (1 + permutations)."""
    n = min(len(a), len(b), PER_SIDE)
    x = np.concatenate([a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)]])
    y = np.repeat([1, 0], n)
    auc = _cv_auc(x, y, rng)
    null = np.array([_cv_auc(x, rng.permutation(y), rng) for _ in range(permutations)])
    return {"auc": auc, "p_value": float((1 + (null >= auc).sum()) / (1 + permutations)), "per_side": int(n)}


def _cv_auc(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    scores = np.empty(len(y))
    folds = StratifiedKFold(min(5, int(np.bincount(y).min())), shuffle=True, random_state=int(rng.integers(2**31)))
    for fit, held in folds.split(x, y):
        mean, std = x[fit].mean(0), x[fit].std(0) + 1e-6
        clf = LogisticRegression(C=1.0, max_iter=500).fit((x[fit] - mean) / std, y[fit])
        scores[held] = clf.decision_function((x[held] - mean) / std)
    return float(roc_auc_score(y, scores))


def shift_section(reference: FeatureReference | None, feats: np.ndarray, seed: int = 0) -> dict:
    """For an evaluation folder: the data-set test and a summary of the per-image scores; "not available"
    (not an error) for a run without a reference."""
    if reference is None:
        return {"available": False, "verdict": NOT_AVAILABLE}
    percentile, flag = unlike_scores(reference, feats)
    per_image = {"images": len(flag), "flagged": int(flag.sum()), "flagged_fraction": float(flag.mean()) if len(flag)
                 else math.nan, "median_percentile": float(np.median(percentile)) if len(flag) else math.nan,
                 "cutoff": f"distance above the {FLAG_QUANTILE:.0%} quantile of the run's validation images "
                           f"({reference.cutoff:.4f}; K = {reference.k})"}
    return {**dataset_shift(reference, feats, seed), "per_image": per_image}
