"""`hedui demo` (what ./scripts/demo runs): a real federation, routed verifications and household decisions."""

from __future__ import annotations

from node.demo import run_demo


def test_the_demo_shows_verifications_household_decisions_and_a_revocation() -> None:
    """A small demo verifies households across provinces, decides some on published standards, and refuses a revoked consent."""
    lines: list[str] = []
    figures = run_demo(provinces_n=5, households=10, rounds=12, detail=1, say=lines.append)
    text = "\n".join(lines)
    assert figures["households"] == 12 and figures["cross_province"] > 0
    assert figures["household_checks"] > 0
    assert "household decisions (" in text and "summed over" in text
    assert "consent has been revoked" in text
    assert "UNEXPECTEDLY" not in text
