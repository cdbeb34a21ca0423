"""Claim checks: a badge with the measured numbers, machine-readable for the scoreboard.

A chapter states what its author established with fixed seeds (``expect``); if the measured outcome differs,
the cell raises, so a regression breaks the build.
"""

import html
import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np
from IPython.display import display

# The claim travels in the output's metadata, which every renderer ignores and the scoreboard reads.
CLAIM_METADATA_KEY = "papers-in-miniature/claim"
OUTCOMES = ("reproduced", "not reproduced")


class ClaimMismatch(AssertionError):
    """The measured outcome of a claim differs from the one the chapter expects."""


@dataclass(frozen=True)
class ClaimResult:
    """One checked claim, as shown in the chapter and collected for the scoreboard."""

    statement: str
    measured: dict[str, float]
    outcome: str
    expect: str
    why: str | None = None


def _check_measured(measured: object) -> dict[str, float]:
    if not isinstance(measured, dict) or not measured:
        raise ValueError("measured must be a non-empty dict of name -> number")
    checked = {}
    for name, value in measured.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"measured keys must be non-empty strings, got {name!r}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"measured[{name!r}] must be a real number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(
                f"measured[{name!r}] must be finite, got {value}: report a bound (e.g. the step budget) and say "
                "'not reached' in the statement or the name"
            )
        checked[name] = float(value)
    return checked


def format_number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}"


OUTCOME_COLOURS = {"reproduced": "#009E73", "not reproduced": "#D55E00"}  # Okabe-Ito green and vermillion


def badge_html(outcome: str) -> str:
    """The coloured badge of an outcome (inline styles: it also shows in Jupyter, without the book's CSS)."""
    return (
        f"<span class='pim-badge' style='background:{OUTCOME_COLOURS[outcome]};color:white;border-radius:3px;"
        f"padding:0.1em 0.5em;font-weight:bold;white-space:nowrap'>{outcome}</span>"
    )


def _as_html(result: ClaimResult) -> str:
    colour = OUTCOME_COLOURS[result.outcome]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{format_number(v)}</td></tr>"
        for k, v in result.measured.items()
    )
    why = f"<p style='margin:0.3em 0 0'><em>Why:</em> {html.escape(result.why)}</p>" if result.why else ""
    return (
        f"<div class='pim-claim' style='border-left:4px solid {colour};padding:0.4em 0.8em;margin:0.5em 0'>"
        f"{badge_html(result.outcome)} "
        f"<span>{html.escape(result.statement)}</span>"
        f"<table style='margin:0.4em 0 0;font-size:90%'>{rows}</table>{why}</div>"
    )


def _as_record(result: ClaimResult) -> dict:
    """The machine-readable claim; the numbers as [name, value] pairs, since notebooks store JSON objects with
    sorted keys and the scoreboard should keep the author's order."""
    return asdict(result) | {"measured": [[name, value] for name, value in result.measured.items()]}


def _as_text(result: ClaimResult) -> str:
    numbers_ = ", ".join(f"{k} = {format_number(v)}" for k, v in result.measured.items())
    why = f"\n  why: {result.why}" if result.why else ""
    return f"[{result.outcome}] {result.statement}\n  measured: {numbers_}{why}"


def claim(
    statement: str,
    *,
    measured: dict[str, float],
    holds: bool,
    expect: str,
    why: str | None = None,
) -> None:
    """Check one claim of the paper, show its badge and numbers, and raise if the outcome is not the expected one.

    Parameters
    ----------
    statement : the claim in one sentence, with its threshold.
    measured : the numbers measured (name -> real number), shown under the badge and on the scoreboard.
    holds : whether the measured numbers satisfy the claim.
    expect : ``"reproduced"`` or ``"not reproduced"``, the outcome the chapter's author established.
    why : required with ``expect="not reproduced"``: why the miniature does not reproduce the claim.
    """
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("statement must be a non-empty string")
    if expect not in OUTCOMES:
        raise ValueError(f"expect must be one of {OUTCOMES}, got {expect!r}")
    if not isinstance(holds, (bool, np.bool_)):
        raise TypeError(f"holds must be a bool (e.g. a comparison), got {type(holds).__name__}")
    if why is not None and (not isinstance(why, str) or not why.strip()):
        raise ValueError("why must be a non-empty string when given")
    if expect == "not reproduced" and why is None:
        raise ValueError('expect="not reproduced" needs why= saying why the miniature does not reproduce it')
    outcome = OUTCOMES[0] if bool(holds) else OUTCOMES[1]
    result = ClaimResult(statement.strip(), _check_measured(measured), outcome, expect, why)
    display(
        {"text/html": _as_html(result), "text/plain": _as_text(result)},
        metadata={CLAIM_METADATA_KEY: _as_record(result)},
        raw=True,
    )
    if outcome != expect:
        raise ClaimMismatch(
            f"claim {statement!r} was expected to be {expect} but is {outcome}; measured: {result.measured}"
        )
