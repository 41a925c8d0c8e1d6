"""Data-level defenses: feasible sets, sanitisation and certified upper bounds.

Steinhardt, Koh & Liang, "Certified defenses for data poisoning attacks" (NeurIPS 2017).
"""

from .bound import Alg1Run, StackedSets, algorithm1
from .certifier import DEFAULT_RHO, Certifier
from .feasible import DEFENSES, FeasibleSet, canonical_defense, fit_feasible_set
from .sanitize import sanitize
from .solver import worst_point
from .svm import hinge, train_svm, train_svm_liblinear

__all__ = [
    "DEFAULT_RHO",
    "DEFENSES",
    "Alg1Run",
    "Certifier",
    "FeasibleSet",
    "StackedSets",
    "algorithm1",
    "canonical_defense",
    "fit_feasible_set",
    "hinge",
    "sanitize",
    "train_svm",
    "train_svm_liblinear",
    "worst_point",
]
