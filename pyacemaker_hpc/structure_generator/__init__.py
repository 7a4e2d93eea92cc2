"""Step 1: candidate structures (mutations.py), their descriptors (descriptors.py) and
the choice of a diverse subset (direct.py). Heavy libraries (torch/mace, pyace, sklearn)
are imported only when a descriptor or selector is built."""
from .direct import (DirectSelector, EntropySelector, RandomSelector, coverage,
                     feature_coverage_score, fill_distance, make_selector, pca_space)
from .mutations import MutationGenerator, prototype_structures

__all__ = ["MutationGenerator", "prototype_structures", "DirectSelector", "EntropySelector",
           "RandomSelector", "make_selector", "pca_space", "coverage", "feature_coverage_score",
           "fill_distance", "make_descriptor"]


def make_descriptor(*args, **kwargs):
    """See :func:`descriptors.make_descriptor` (imported lazily)."""
    from .descriptors import make_descriptor as _make

    return _make(*args, **kwargs)
