"""Tests of lib/toy_mwp.py: answers against closed forms written independently of the expression strings."""

import numpy as np
import pytest
from mwp_oracle import CLOSED_FORMS

from lib.safe_exec import safe_execute_many
from lib.toy_mwp import (
    TEMPLATES,
    answers_match,
    evaluate_expression,
    fill_question,
    is_consistent,
    reference_program,
    sample_problem,
    sample_problems,
    template_by_name,
)


def test_every_template_has_an_independent_closed_form():
    assert set(CLOSED_FORMS) == {t.name for t in TEMPLATES}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_sampled_problems_are_consistent_and_answered_correctly(template):
    rng = np.random.default_rng(1)
    for _ in range(20):
        problem = sample_problem(template, rng)
        assert is_consistent(template, problem.values)
        assert answers_match(problem.answer, CLOSED_FORMS[template.name](*problem.values))
        assert fill_question(template, problem.values) == problem.question


def test_reference_programs_run_in_the_sandbox():
    rng = np.random.default_rng(2)
    problems = sample_problems(3, rng)
    results = safe_execute_many([reference_program(p.template) for p in problems], args=[p.values for p in problems])
    assert all(r.ok and answers_match(r.value, CLOSED_FORMS[p.template.name](*p.values))
               for r, p in zip(results, problems, strict=True))


def test_more_digits_gives_that_many_digits():
    rng = np.random.default_rng(3)
    problem = sample_problem(template_by_name("add"), rng, digits=5)
    assert all(len(str(v)) == 5 for v in problem.values)


def test_consistency_by_hand():
    sell = template_by_name("sell")
    assert is_consistent(sell, [10, 3]) and not is_consistent(sell, [3, 10])
    share = template_by_name("share")
    assert is_consistent(share, [12, 4]) and not is_consistent(share, [13, 4]) and not is_consistent(share, [12, 0])
    assert evaluate_expression(template_by_name("discount"), [200, 20]) == pytest.approx(160)


def test_bad_inputs():
    with pytest.raises(ValueError, match="name"):
        template_by_name("nope")
    with pytest.raises(ValueError, match="values"):
        evaluate_expression(TEMPLATES[0], [1, 2, 3])
    with pytest.raises(TypeError, match="rng"):
        sample_problem(TEMPLATES[0], 0)
    with pytest.raises(ValueError, match="per_template"):
        sample_problems(0, np.random.default_rng(0))
    assert not answers_match("3", 3) and not answers_match(float("nan"), 3)
