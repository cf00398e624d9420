"""The model store shared by the model components: versioned, hash-verified scikit-learn artefacts in data/."""

from services.models.registry import (
    EstimatorParams,
    Matrix,
    MatrixRef,
    ModelRecord,
    ModelRegistry,
    build_estimator,
    clear_cache,
    load_matrix,
)

__all__ = [
    "EstimatorParams",
    "Matrix",
    "MatrixRef",
    "ModelRecord",
    "ModelRegistry",
    "build_estimator",
    "clear_cache",
    "load_matrix",
]
