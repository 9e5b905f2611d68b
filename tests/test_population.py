"""The load-test population: valid numbers, deterministic, unique, invertible, with the asked-for mix."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from datetime import date

import pytest

from app.identity import parse_identity, resident_check_char
from loadtests.population import (
    KINDS,
    SITUATIONS,
    SPACE,
    Population,
    check_char,
    parse_shares,
    write_csv,
)

SAMPLE = 200_000


# Building the sample takes over a second, so every test that uses it is slow: marking only the first
# would move that cost to the next one.
@pytest.fixture(scope="module")
def sample() -> list[str]:
    return [p.number for p in Population(11).people(SAMPLE)]


def test_check_character_agrees_with_the_service() -> None:
    rng = random.Random(1)
    for _ in range(20_000):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        assert check_char(first17) == resident_check_char(first17)
    # GB 11643-1999's own example.
    assert check_char("11010519491231002") == "X"
    with pytest.raises(ValueError):
        check_char("1234")


@pytest.mark.slow
def test_every_number_is_a_valid_resident_number(sample: list[str]) -> None:
    today = date(2022, 6, 1)
    for number in sample:
        assert parse_identity("resident", number, today=today).number == number


@pytest.mark.slow
def test_numbers_are_unique_across_a_large_sample(sample: list[str]) -> None:
    assert len(set(sample)) == SAMPLE


@pytest.mark.slow
def test_deterministic_from_the_seed(sample: list[str]) -> None:
    again = Population(11)
    assert [again.number(i) for i in range(0, SAMPLE, 1000)] == sample[::1000]
    assert again.person(123) == Population(11).person(123)
    other = Population(12)
    assert sum(other.number(i) == sample[i] for i in range(1000)) < 5


@pytest.mark.slow
def test_index_to_number_is_a_bijection(sample: list[str]) -> None:
    population = Population(11)
    for index in range(0, SAMPLE, 37):
        assert population.index_of(sample[index]) == index
    # Far into the space, up to its last index: 32 million people need no memory.
    for index in (32_000_000, 32_000_001, SPACE // 2, SPACE - 1):
        assert population.index_of(population.number(index)) == index
    # Numbers this population never generates: a region it does not use, a wrong check character.
    assert population.index_of("11010119491231002X") is None
    assert population.index_of(sample[0][:17] + ("0" if sample[0][17] != "0" else "1")) is None
    with pytest.raises(IndexError):
        population.number(SPACE)


@pytest.mark.slow
def test_numbers_differ_from_neighbours_so_no_prefix_is_biased() -> None:
    population = Population(3)
    regions = Counter(population.number(i)[:6] for i in range(50_000))
    # Yubei (渝北, the most populous district) outnumbers Chengkou (城口, the least) about ten to one.
    assert 7 < regions["500112"] / regions["500229"] < 15
    chongqing = sum(n for r, n in regions.items() if r.startswith("50"))
    assert 0.90 < chongqing / 50_000 < 0.96
    ages = Counter(2022 - int(population.number(i)[6:10]) for i in range(50_000))
    children = sum(n for age, n in ages.items() if age <= 14)
    elderly = sum(n for age, n in ages.items() if age >= 65)
    assert 0.15 < children / 50_000 < 0.20
    assert 0.12 < elderly / 50_000 < 0.16
    sexes = Counter(int(population.number(i)[16]) % 2 for i in range(50_000))
    assert abs(sexes[0] - sexes[1]) < 1000


def test_colour_shares_are_configurable() -> None:
    population = Population(5, parse_shares("green=0.5,yellow=0.3,red=0.2"))
    colours = Counter(population.person(i).colour for i in range(20_000))
    assert abs(colours["green"] / 20_000 - 0.5) < 0.02
    assert abs(colours["yellow"] / 20_000 - 0.3) < 0.02
    assert abs(colours["red"] / 20_000 - 0.2) < 0.02
    # Shares change situations, never numbers.
    assert population.number(77) == Population(5).number(77)
    only_red = Population(5, {"red": 1.0})
    assert {only_red.person(i).colour for i in range(500)} == {"red"}
    with pytest.raises(ValueError):
        Population(5, {"blue": 1.0})


def test_csv_export_per_kind() -> None:
    population = Population(9, {"green": 0.4, "yellow": 0.3, "red": 0.3})
    now = 1_650_000_000
    exported: dict[str, list[dict[str, str]]] = {}
    for kind in KINDS:
        out = io.StringIO()
        written = write_csv(out, population, kind, 300, now=now)
        out.seek(0)
        reader = csv.DictReader(out)
        assert tuple(reader.fieldnames or ()) == KINDS[kind]
        exported[kind] = list(reader)
        assert len(exported[kind]) == written
    people = [population.person(i) for i in range(300)]
    assert [r["id_number"] for r in exported["population"]] == [p.number for p in people]
    designated = {r["id_number"]: r["kind"] for r in exported["designation"]}
    for person in people:
        if person.situation in ("close_contact", "quarantine", "confirmed", "secondary_contact"):
            assert designated[person.number] == person.situation
        else:
            assert person.number not in designated
    positives = {r["id_number"] for r in exported["test"] if r["result"] == "positive"}
    assert positives == {p.number for p in people if p.situation == "positive_test"}
    arrivals = {r["id_number"] for r in exported["travel"]}
    assert arrivals == {p.number for p in people if p.situation.startswith("arrival_")}
    assert {r["area_code"] for r in exported["risk_area"]} >= {r["area_code"] for r in exported["travel"]}
    assert set(SITUATIONS) >= {p.situation for p in people}
