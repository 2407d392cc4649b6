"""Hyperparameter rules the planner reads: the peak learning rate as a function of model size.

A rule is LR*(N) = c · N^-k, kept as ``lr_ref · (n_ref / N)^k`` (c = lr_ref · n_ref^k; n_ref is
the geometric mean of the sizes it was fitted on, where the fit knows lr_ref best), with N counted
under the rule's own convention (``params``), so a plan in either convention reads the same rule.

``scaling tune-lr`` fits one from short LR sweeps (``scaling.tune``) and writes it as a rule file;
``scaling plan --lr-rule FILE`` uses it. Without a rule file the planner falls back on
``DEFAULT_LR_RULE``: 6e-4 at 124M total parameters (GPT-3 Small's peak LR, Brown et al. 2020,
Table 2.1; nanoGPT's for GPT-2 small) scaled by 1/sqrt(N), a folk heuristic, assumed, not fitted.

A rule file is YAML with ``kind: lr_rule``; the fields ``LrRule`` reads are at its top level, the
evidence (per-size optima, every run's loss) under ``sizes``. A rule fitted on one vocabulary or
tokenizer does not carry to another (the embedding's share of N and the loss scale change), so
``LrRule.check`` refuses that pairing.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import ConfigError

__all__ = ["LrRule", "DEFAULT_LR_RULE", "RULE_KIND", "load_lr_rule"]

RULE_KIND = "lr_rule"


@dataclass(frozen=True)
class LrRule:
    """Peak LR = ``lr_ref · (n_ref / N)^k`` = c · N^-k, N counted as ``params`` ("total" or "non-embedding").

    ``vocab_size`` and ``tokenizer`` are those the rule was fitted on (None: not tied to one);
    ``beta2`` the Adam β2 its runs used; ``source`` where the constants come from.
    """

    lr_ref: float
    n_ref: float
    k: float
    params: str = "total"
    vocab_size: int | None = None
    tokenizer: str | None = None
    beta2: float = 0.95
    source: str = ""

    @property
    def c(self) -> float:
        """The c of c · N^-k."""
        return self.lr_ref * self.n_ref**self.k

    def lr_peak(self, counts: dict[str, int]) -> float:
        """The peak LR of a model with these parameter counts (``model.count_params``)."""
        n = counts["total" if self.params == "total" else "non_embedding"]
        # Three significant figures: specs stay readable, and no rule is known better than that.
        return float(f"{self.lr_ref * (self.n_ref / n) ** self.k:.3g}")

    def check(self, vocab_size: int, tokenizer: str | None = None) -> None:
        """Raise a one-line ConfigError when the plan's vocabulary or tokenizer is not the rule's."""
        if self.vocab_size is not None and vocab_size != self.vocab_size:
            raise ConfigError(
                f"--lr-rule: fitted on vocabulary {self.vocab_size} ({self.tokenizer}), the plan's is "
                f"{vocab_size}{f' ({tokenizer})' if tokenizer else ''}; run scaling tune-lr on this data")
        if self.tokenizer is not None and tokenizer is not None and tokenizer != self.tokenizer:
            raise ConfigError(f"--lr-rule: fitted with tokenizer {self.tokenizer}, the plan's data uses "
                              f"{tokenizer}; run scaling tune-lr on this data")


DEFAULT_LR_RULE = LrRule(
    lr_ref=6e-4,
    n_ref=124e6,
    k=0.5,
    params="total",
    source="assumed, not fitted: GPT-3 Small's 6e-4 (Brown et al. 2020) scaled by 1/sqrt(N); "
           "scaling tune-lr fits one",
)


def load_lr_rule(path: str | os.PathLike[str]) -> LrRule:
    """Read the ``LrRule`` of a rule file written by ``scaling tune-lr``.

    Raises
    ------
    ConfigError
        The file is missing, not YAML, not an lr_rule, or lacks a field; the message names it.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--lr-rule {p}: no such file (write one with scaling tune-lr --out {p})")
    try:
        doc: Any = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--lr-rule {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("kind") != RULE_KIND:
        raise ConfigError(f"--lr-rule {p}: not an LR rule file (no 'kind: {RULE_KIND}'); write one with scaling tune-lr")
    names = [f.name for f in dataclasses.fields(LrRule)]
    missing = [n for n in ("lr_ref", "n_ref", "k", "params", "vocab_size", "tokenizer", "beta2") if n not in doc]
    if missing:
        raise ConfigError(f"--lr-rule {p}: missing {', '.join(missing)}; rewrite it with scaling tune-lr")
    rule = LrRule(**{n: doc[n] for n in names if n in doc and n != "source"}, source=str(p))
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rule.lr_ref, rule.n_ref, rule.k))
    if not (ok and rule.lr_ref > 0 and rule.n_ref > 0 and rule.params in ("total", "non-embedding")):
        raise ConfigError(f"--lr-rule {p}: needs lr_ref > 0, n_ref > 0, a finite k and params total or "
                          f"non-embedding (got {rule.lr_ref}, {rule.n_ref}, {rule.k}, {rule.params!r})")
    return rule
