"""The out-of-scope score of a classifier bundle: how far a text's pooled embedding lies from every in-scope
class, as a number in 0..1 next to the softmax's confidence, margin and entropy.

A softmax head is confident about texts unlike anything it was trained on (it must pick a class); the
encoder's embedding shows them far from every class. A bundle that carries the score has

    model.outputs    [logits, "pooled"]: the embedding the head reads (edge_runtime/build/graph.py)
    ood.npz          whiten (d, r), centers (C, r) float32; location, scale float64 scalars
    postprocess.ood  {"file": "ood.npz", "output": "pooled", "method": "mahalanobis",
                      "reject_threshold": above it the answer is the reject label, or null, ...}

ood.npz is listed and hashed in the manifest like every other file, so the manifest's signature covers it.
The score (kernels.ood.ood_scores): the squared Mahalanobis distance to the nearest class mean under a
shared covariance, squashed on a log scale; the build (edge_runtime/build/ood.py) sets location and scale
so that a median training text scores 0.05 and one at the training texts' 95th percentile 0.5. A bundle
without the section or the output runs as before, and its predictions have `ood` None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import kernels
from .errors import BundleError

DEFAULT_FILE = "ood.npz"
DEFAULT_OUTPUT = "pooled"
METHODS = ("mahalanobis",)
ARRAYS = ("whiten", "centers")
SCALARS = ("location", "scale")


@dataclass(frozen=True)
class OodParameters:
    whiten: np.ndarray  # (d, r) float32: W with W @ W.T = the inverse of the shared (shrunk) covariance
    centers: np.ndarray  # (C, r) float32: the in-scope class means times W
    location: float  # ln of the distance that scores 0.5
    scale: float  # how many units of ln(distance) move the score from 0.5 to 1 / (1 + e^-1)

    def write(self, path: Path) -> None:
        """An uncompressed .npz of plain arrays (no pickles)."""
        with open(path, "wb") as handle:
            np.savez(
                handle,
                whiten=np.ascontiguousarray(self.whiten, dtype=np.float32),
                centers=np.ascontiguousarray(self.centers, dtype=np.float32),
                location=np.float64(self.location),
                scale=np.float64(self.scale),
            )

    @classmethod
    def read(cls, path: Path) -> OodParameters:
        """The parameters in `path`, checked: names, dtypes, shapes, finite values. BundleError otherwise."""
        name = Path(path).name
        try:
            with np.load(path, allow_pickle=False) as data:
                found = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as error:
            raise BundleError(f"{name}: not a readable .npz of arrays ({error})") from None
        if sorted(found) != sorted(ARRAYS + SCALARS):
            raise BundleError(f"{name}: expected arrays {', '.join(ARRAYS + SCALARS)}, found {', '.join(found)}")
        whiten, centers = found["whiten"], found["centers"]
        for key in ARRAYS:
            if found[key].dtype != np.float32 or found[key].ndim != 2:
                raise BundleError(
                    f"{name}: {key} must be a 2-D float32 array, got {found[key].dtype} {found[key].shape}"
                )
            if not np.isfinite(found[key]).all():
                raise BundleError(f"{name}: {key} holds NaN or infinity")
        if centers.shape[0] < 1 or centers.shape[1] != whiten.shape[1]:
            raise BundleError(f"{name}: centers {centers.shape} do not match whiten {whiten.shape}")
        scalars = {}
        for key in SCALARS:
            if found[key].shape != () or found[key].dtype.kind != "f" or not math.isfinite(float(found[key])):
                raise BundleError(f"{name}: {key} must be a finite float scalar")
            scalars[key] = float(found[key])
        if scalars["scale"] <= 0:
            raise BundleError(f"{name}: scale must be > 0")
        return cls(np.ascontiguousarray(whiten), np.ascontiguousarray(centers), **scalars)

    @property
    def hidden(self) -> int:
        return int(self.whiten.shape[0])


@dataclass(frozen=True)
class OodScorer:
    """The bundle's score: parameters read and checked once at load, the kernel per batch."""

    parameters: OodParameters
    output: str  # the graph output holding the pooled embedding
    method: str = "mahalanobis"

    @classmethod
    def from_manifest(cls, bundle_dir: Path, section: dict | None, graph_outputs: list[str]) -> OodScorer | None:
        """None when the bundle has no postprocess.ood section; BundleError when it has a broken one."""
        if not section:
            return None
        if not isinstance(section, dict):
            raise BundleError("postprocess.ood must be an object")
        method = section.get("method", "mahalanobis")
        if method not in METHODS:
            raise BundleError(f"postprocess.ood.method {method!r} is not one of {', '.join(METHODS)}")
        output = section.get("output", DEFAULT_OUTPUT)
        if output not in graph_outputs:
            raise BundleError(f"postprocess.ood needs the model output {output!r}; the graph has {graph_outputs}")
        parameters = OodParameters.read(Path(bundle_dir) / section.get("file", DEFAULT_FILE))
        return cls(parameters, output, method)

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """float32 (B,) in 0..1 for pooled embeddings (B, d): higher is farther from every in-scope class."""
        p = self.parameters
        if pooled.ndim != 2 or pooled.shape[1] != p.hidden:
            raise BundleError(f"the model's {self.output!r} output is {pooled.shape}; ood.npz expects (B, {p.hidden})")
        return kernels.ood.ood_scores(pooled, p.whiten, p.centers, p.location, p.scale)


def reject_threshold(section: dict | None) -> float | None:
    """postprocess.ood.reject_threshold as a float in 0..1, or None."""
    value = (section or {}).get("reject_threshold")
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise BundleError(f"postprocess.ood.reject_threshold must be between 0 and 1, got {value}")
    return value
