"""docs/reliability.md is the table of the suite's fault markers, and the markers are sound."""

from tests.reliability_doc import AREAS, DOC, collect, render


def test_the_reliability_table_is_the_suites():
    assert DOC.read_text() == render(collect()), (
        "docs/reliability.md is stale: run python -m tests.reliability_doc"
    )


def test_every_fault_marker_names_a_known_area_and_a_unique_test():
    faults = collect()
    assert len(faults) >= 20
    assert {f.area for f in faults} <= set(AREAS)
    assert len({f.test for f in faults}) == len(faults)
