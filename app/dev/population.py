"""Synthetic people for demos: valid GB 11643 numbers, names, and a spread of health situations.

Deterministic from a seed, so `healthcode demo --list` can print again the numbers it loaded
without anyone storing them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from app.identity import resident_check_char

# County-level codes of Chongqing (GB/T 2260), where most demo residents live, and a few elsewhere.
HOME_REGIONS: Final = (
    "500101", "500103", "500104", "500105", "500106", "500107", "500108", "500109", "500112", "500113",
    "500115", "500117", "500118", "500120", "510104", "510107", "420102", "110105", "310104", "440305",
)  # fmt: skip
SURNAMES: Final = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN: Final = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华飞玉兰建国红梅志强丹玲婷浩宇欣怡子涵梓萱"

# Situations and their share of the population; each yields the records the rules turn into a colour.
SITUATIONS: Final = (
    ("vaccinated_negative", 0.62),
    ("unvaccinated", 0.10),
    ("partly_vaccinated", 0.05),
    ("arrival_cleared", 0.04),
    ("arrival_pending", 0.05),
    ("secondary_contact", 0.04),
    ("close_contact", 0.04),
    ("quarantine", 0.02),
    ("positive_test", 0.02),
    ("confirmed", 0.02),
)


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    number: str  # synthetic resident identity number
    name: str
    situation: str


_DAYS: Final = 80 * 365  # birth dates from 1940 on
_SPACE: Final = len(HOME_REGIONS) * 1000 * _DAYS
# A multiplier coprime with _SPACE makes index -> number a bijection: unique without remembering any.
_STRIDE: Final = 2_654_435_761


def synthetic_people(count: int, seed: int) -> Iterator[Person]:
    if count > _SPACE:
        raise ValueError(f"at most {_SPACE} distinct synthetic people")
    rng = random.Random(seed)
    names = [s for s, _ in SITUATIONS]
    weights = [w for _, w in SITUATIONS]
    offset = rng.randrange(_SPACE)
    for index in range(count):
        code = (index * _STRIDE + offset) % _SPACE
        code, sequence = divmod(code, 1000)
        day, region = divmod(code, len(HOME_REGIONS))
        born = date(1940, 1, 1) + timedelta(days=day)
        first17 = f"{HOME_REGIONS[region]}{born:%Y%m%d}{sequence:03d}"
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        yield Person(index, first17 + resident_check_char(first17), name, rng.choices(names, weights)[0])
