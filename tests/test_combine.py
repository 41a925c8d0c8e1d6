"""The combination rule of the scan verdict (trojanscope.combine): Cauchy (Liu & Xie 2020) and
Holm, their validity under strongly dependent p-values, and the verdict rules."""

from __future__ import annotations

import math

import pytest
import torch

from trojanscope.combine import (
    Evidence,
    cauchy_combination,
    combine_evidence,
    combine_pvalues,
    holm_adjusted,
)
from trojanscope.errors import InputError


def test_cauchy_known_values():
    # one p-value is returned as is; identical p-values combine to the same p-value (the Cauchy
    # statistic of m copies is the same Cauchy variable)
    assert cauchy_combination([0.2]) == pytest.approx(0.2)
    assert cauchy_combination([0.01, 0.01, 0.01]) == pytest.approx(0.01)
    # a tiny p-value dominates: about m * p_min, like Bonferroni
    assert cauchy_combination([1e-20, 0.5]) == pytest.approx(2e-20, rel=1e-6)
    assert cauchy_combination([0.0, 0.9]) == 0.0
    # a p-value of 1 would be -inf: Bonferroni instead
    assert cauchy_combination([0.01, 1.0]) == pytest.approx(0.02)
    # weights
    assert cauchy_combination([0.01, 0.5], weights=[1, 0]) == pytest.approx(0.01)


def test_holm_adjusted():
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert combine_pvalues([0.01, 0.04, 0.03], "holm") == pytest.approx(0.03)


@pytest.mark.parametrize("bad", [[], [1.5], [float("nan")], [-0.1]])
def test_bad_pvalues_are_errors(bad):
    with pytest.raises(InputError):
        cauchy_combination(bad)


def _dependent_pvalues(n: int, m: int, rho: float, seed: int = 0) -> torch.Tensor:
    """n draws of m one-sided p-values of equicorrelated normal test statistics (null true)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, 1, generator=g, dtype=torch.float64)
    z = math.sqrt(rho) * common + math.sqrt(1 - rho) * torch.randn(n, m, generator=g, dtype=torch.float64)
    return 0.5 * torch.erfc(z / math.sqrt(2))  # P(Z > z)


@pytest.mark.parametrize("rule", ["cauchy", "holm"])
def test_type_one_error_under_strong_dependence(rule):
    """Under the null with strongly correlated methods (rho = 0.9) the combined test rejects at
    most about alpha of the time, where Fisher's rule (independence) rejects far more often."""
    ps = _dependent_pvalues(20_000, 3, 0.9)
    alpha = 0.05
    rej = sum(combine_pvalues(row.tolist(), rule) < alpha for row in ps) / len(ps)
    assert rej <= alpha * 1.15  # Monte Carlo error of 20k draws is ~0.0015
    # the same draws through Fisher's rule (valid only for independent p-values) over-reject:
    # this is what the dependence-valid rules protect against
    from scipy import stats

    fisher = stats.chi2.sf(-2 * torch.log(ps).sum(1).numpy(), df=2 * ps.shape[1])
    assert (fisher < alpha).mean() > 2 * alpha


def test_power_when_one_method_sees_the_backdoor():
    assert combine_pvalues([1e-4, 0.6, 0.4]) < 0.001


def test_verdict_backdoored_names_target_and_disagreement():
    ev = [Evidence("neural_cleanse", 1e-4, target=3, sources=[1]),
          Evidence("lred", 0.02, target=3, sources=[2]),
          Evidence("bias_maps", 0.7, target=5)]
    v = combine_evidence(ev)
    assert v.verdict == "backdoored" and v.exit_code == 1
    assert v.target == 3 and v.sources == [1, 2]
    assert v.supporting == ["neural_cleanse", "lred"]
    assert [d["method"] for d in v.disagreeing] == ["bias_maps"]
    assert "target class 3" in v.reason


def test_verdict_target_split_between_significant_methods():
    ev = [Evidence("a", 1e-6, target=3), Evidence("b", 1e-3, target=7)]
    v = combine_evidence(ev)
    assert v.verdict == "backdoored" and v.target == 3
    assert v.disagreeing[0]["method"] == "b" and "class 7" in v.disagreeing[0]["why"]


def test_verdict_clean_and_inconclusive():
    assert combine_evidence([Evidence("a", 0.4), Evidence("b", 0.8)]).verdict == "clean"
    assert combine_evidence([Evidence("a", 0.4), Evidence("b", 0.8)]).exit_code == 0
    # one method significant alone, not after combination: the evidence is split
    split = combine_evidence([Evidence("a", 0.03, target=2), Evidence("b", 0.99), Evidence("c", 0.9)])
    assert split.verdict == "inconclusive" and split.exit_code == 3 and "split" in split.reason
    # a method flagging by its own rule (NC: index > 2) without calibrated significance
    assert combine_evidence([Evidence("a", 0.16, target=1, flagged=True)]).verdict == "inconclusive"
    # a method that could not run makes "clean" inconclusive
    assert combine_evidence([Evidence("a", 0.4)], failed=["b"]).verdict == "inconclusive"
    # nothing to combine
    assert combine_evidence([Evidence("a", None)]).verdict == "inconclusive"
