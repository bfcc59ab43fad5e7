"""Heavy tests (issue 17 item 5): every architecture of the catalogue (``tests/real_models``:
timm, transformers and torch models built small from their own classes and configs, random
weights, no downloads) compiles, round-trips bit for bit and passes the soundness,
completeness and swap oracles. ``python bench/coverage_table.py`` runs the same checks and writes
``docs/coverage.md``.

Architectures the compiler still refuses are listed in ``REFUSED`` with the op the refusal names:
their test asserts that it is that refusal (one line, at compile time, never a wrong graph), so
that supporting one fails the test until it moves to the passing set.
"""

from __future__ import annotations

import pytest

from real_models import CATALOGUE
from real_models.checks import check

pytestmark = pytest.mark.heavy

REFUSED = {  # family -> what the compiler's one-line refusal names
    # issue 20's families still refused
    "ConvBERT": "aten.im2col.default",  # span-based dynamic convolution unfolds the sequence
}


@pytest.mark.parametrize("family", sorted(set(CATALOGUE) - set(REFUSED)))
def test_architecture_passes_every_oracle(family):
    row = check(family)
    assert row["status"] == "pass", f"{family}: {row['status']} failed: {row.get('reason')}"
    assert row["generators"] >= 1 and row["declared"] > 0, row


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_architecture_still_refused_cleanly(family):
    row = check(family)
    assert row["status"] == "compile" and REFUSED[family] in row["reason"], row


def test_catalogue_has_the_architectures_the_issue_names():
    assert len(CATALOGUE) >= 50
    assert len(set(CATALOGUE) - set(REFUSED)) >= 40
