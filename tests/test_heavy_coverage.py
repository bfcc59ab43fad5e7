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

REFUSED: dict[str, str] = {}  # family -> what the compiler's one-line refusal names (none left)


@pytest.mark.parametrize("family", sorted(set(CATALOGUE) - set(REFUSED)))
def test_architecture_passes_every_oracle(family):
    row = check(family)
    assert row["status"] == "pass", f"{family}: {row['status']} failed: {row.get('reason')}"
    assert row["generators"] >= 1 and row["declared"] > 0, row


def test_refused_architectures_are_refused_cleanly():
    """Each listed family is refused at compile time with the refusal named (one line, never a
    wrong graph); supporting one fails this test until it moves to the passing set."""
    assert set(REFUSED) <= set(CATALOGUE)
    for family, refusal in REFUSED.items():
        row = check(family)
        assert row["status"] == "compile" and refusal in row["reason"], row


def test_catalogue_has_the_architectures_the_issue_names():
    assert len(CATALOGUE) >= 50
    assert len(set(CATALOGUE) - set(REFUSED)) >= 40
