"""The controlled math world: GSM8K-like word problems whose structured solution we know.

A problem is a chain. It states a start quantity, then 1..k *moves*; each move states one new
quantity in the question and adds one arithmetic step (+, -, *, // with an exact integer result) to
the solution. A family (shopping, ages, rates, ...) is a table of moves; a move may follow another
when the *kind* of the running value matches (a count of items, an amount of money, a speed...).
The solution stays structured (named quantities, ordered steps), so every output format is
rendered from the same facts by echochamber.formats.render and no format can be more "right" than
another.

Splits never share a question text. `test` and `hard` are drawn first and do not depend on the
pool sizes of later splits, so growing the pretraining pool never changes the test set. `hard`
keeps only problems the normal difficulty cannot produce (more steps or larger numbers), so it is
disjoint by construction, not only by deduplication.
"""

from __future__ import annotations

import functools
import json
import keyword
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echochamber.config import config_hash, from_dict, to_dict
from echochamber.data.records import Record
from echochamber.errors import UserError
from echochamber.formats.render import RENDER_STYLES, render, solution_text

# Bump when the same config would produce different problems or renderings.
GENERATOR_VERSION = "1"
SPLITS = ("pretrain", "rl", "test", "hard")
# Generation order: held-out splits first, so their content depends only on (seed, their own size).
_ORDER = ("test", "hard", "rl", "pretrain")
# Give up on a split after this many draws in a row that were duplicates or dead ends.
_MAX_MISSES = 5000


@dataclass
class Difficulty:
    """The knob: how many steps, and how large the numbers may get."""

    min_steps: int = 1
    max_steps: int = 2
    max_number: int = 20  # largest number stated in a question
    max_factor: int = 5  # largest multiplier or divisor (keeps products small for tiny models)
    max_result: int = 100  # largest value any step may produce

    def validate(self) -> None:
        # Beyond 8 steps questions outgrow GSM8K's size and families start repeating their moves.
        if not 1 <= self.min_steps <= self.max_steps <= 8:
            raise UserError(
                f"difficulty needs 1 <= min_steps <= max_steps <= 8, got {self.min_steps}..{self.max_steps}"
            )
        if self.max_number < 10:  # below that most moves have no legal operand (values stay >= 2)
            raise UserError(f"difficulty.max_number must be at least 10, got {self.max_number}")
        if not 2 <= self.max_factor <= self.max_number:
            raise UserError(f"difficulty.max_factor must be in 2..max_number, got {self.max_factor}")
        if self.max_result < self.max_number:
            raise UserError(
                f"difficulty.max_result ({self.max_result}) must be >= max_number ({self.max_number})"
            )


def _hard_default() -> Difficulty:
    return Difficulty(min_steps=3, max_steps=5, max_number=100, max_factor=10, max_result=1000)


@dataclass
class WorldConfig:
    """Split sizes, seed, and the difficulty of the normal splits (pretrain, rl, test) and of `hard`."""

    seed: int = 0
    n_pretrain: int = 30000
    n_rl: int = 2000
    n_test: int = 500
    n_hard: int = 500
    difficulty: Difficulty = field(default_factory=Difficulty)  # easy: learnable by a ~1M model on CPU
    hard: Difficulty = field(default_factory=_hard_default)  # transfer split: more steps, larger numbers

    def validate(self) -> None:
        for split in SPLITS:
            if getattr(self, f"n_{split}") < 0:
                raise UserError(f"n_{split} must be >= 0")
        self.difficulty.validate()
        self.hard.validate()
        d, h = self.difficulty, self.hard
        wider = (
            h.max_steps > d.max_steps
            or h.max_number > d.max_number
            or h.max_result > d.max_result
            or h.max_factor > d.max_factor
        )
        if not wider:
            raise UserError(
                "hard must allow more steps or larger numbers than difficulty (else it has no problems)"
            )


@dataclass(frozen=True)
class Quantity:
    name: str  # snake_case variable name, e.g. "price_per_pencil"
    value: int


@dataclass(frozen=True)
class Step:
    """`name = left op right` with `op` in + - * / (division is exact), and how to say it.

    `statement` is a sentence with a `{calc}` slot for the arithmetic (or the boxed answer), e.g.
    "Mia has {calc} apples left."; it may start lower-case: renderers capitalise.
    """

    name: str
    op: str
    left: str
    right: str
    value: int
    statement: str


@dataclass(frozen=True)
class Problem:
    """One word problem: its text, its integer answer and the solution every format is rendered from."""

    id: str
    family: str
    question: str
    answer: int
    quantities: tuple[Quantity, ...]
    steps: tuple[Step, ...]


# ---- families ---------------------------------------------------------------------------------
# A family is written as small tables, one string per row:
#   pool:  "slot/slot2 = value/value2, value/value2, ..."   (one entry is drawn per problem)
#   start: "KIND | QUANTITY | sentence / sentence"           ({v} is the start value)
#   move:  "NEEDS OP [shift] | QUANTITY -> RESULT : GIVES | sentence / sentence | statement | question"
# OP is + - * / or r- (operand minus running value: "pays with a $20 bill"). {n} is the move's
# operand, {calc} the arithmetic. QUANTITY/RESULT become snake_case variable names. `shift` moves
# the subject on to {next} (ages, comparisons between people). A move that GIVES a kind no move
# needs ("end") can only come last. Every slot is filled from the person, friend and pools.


@dataclass(frozen=True)
class _Move:
    needs: str
    op: str
    shift: bool
    quantity: str
    result: str
    gives: str
    sentences: tuple[str, ...]
    statement: str
    question: str


@dataclass(frozen=True)
class _Family:
    name: str
    pools: tuple[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], ...]
    starts: tuple[tuple[str, str, tuple[str, ...]], ...]
    moves: tuple[_Move, ...]
    relatives: bool  # {next} is "Mia's cousin" (ages) rather than another name
    cap: int | None  # no value above this, whatever the difficulty (nobody is 300 years old)
    live_kinds: frozenset[str]


def _family(
    name: str,
    pools: list[str],
    starts: list[str],
    moves: list[str],
    relatives: bool = False,
    cap: int | None = None,
) -> _Family:
    parsed_pools = []
    for row in pools:
        slots, values = row.split(" = ")
        parsed_pools.append((tuple(slots.split("/")), tuple(tuple(v.split("/")) for v in values.split(", "))))
    parsed_starts = []
    for row in starts:
        kind, quantity, sentences = (part.strip() for part in row.split("|"))
        parsed_starts.append((kind, quantity, tuple(s.strip() for s in sentences.split(" / "))))
    parsed_moves = []
    for row in moves:
        head, names, sentences, statement, question = (part.strip() for part in row.split("|"))
        needs, op, *flags = head.split()
        quantity, rest = names.split(" -> ")
        result, gives = rest.split(" : ")
        assert op in ("+", "-", "*", "/", "r-") and flags in ([], ["shift"]), row
        said = tuple(s.strip() for s in sentences.split(" / ")) if sentences else ("",)
        parsed_moves.append(_Move(needs, op, bool(flags), quantity, result, gives, said, statement, question))
    live = frozenset(m.needs for m in parsed_moves)
    return _Family(name, tuple(parsed_pools), tuple(parsed_starts), tuple(parsed_moves), relatives, cap, live)


FAMILIES: tuple[_Family, ...] = (
    _family(
        "shopping",
        [
            "item/items = pencil/pencils, notebook/notebooks, apple/apples, sticker/stickers, eraser/erasers, "
            "orange/oranges, marker/markers, candle/candles, balloon/balloons, cupcake/cupcakes",
            "extra/extra_var = a backpack/backpack, a lunch box/lunch_box, a scarf/scarf, a book/book, a hat/hat",
        ],
        ["items | {items} | {name} buys {v} {items}. / {name} picks up {v} {items} at the store."],
        [
            "items + | more_{items} -> total_{items} : items | {pron} then buys {n} more {items}. / later, {pron} buys "
            "another {n} {items}. | {name} buys {calc} {items} in total. | How many {items} does {name} buy in total?",
            "items - | {items}_given -> {items}_left : items | {pron} gives {n} {items} to {friend}. / {pron} gives "
            "{friend} {n} of the {items}. | {name} has {calc} {items} left. | How many {items} does {name} have left?",
            "items * | price_per_{item} -> cost : money | each {item} costs ${n}. / the {items} cost ${n} each. "
            "| the {items} cost {calc} dollars. | How many dollars do the {items} cost?",
            "money + | {extra_var}_price -> total_cost : money | {pron} also buys {extra} for ${n}. / {extra} costs "
            "{obj} another ${n}. | {name} spends {calc} dollars in total. | How many dollars does {name} spend in total?",
            "money - | discount -> cost_after_discount : money | {pron} has a coupon for ${n} off. / the store gives "
            "{obj} ${n} off. | {name} pays {calc} dollars after the discount. | How many dollars does {name} pay?",
            "money r- | bill -> change : end | {pron} pays with a ${n} bill. / {pron} hands the cashier ${n}. "
            "| {name} gets {calc} dollars in change. | How many dollars of change does {name} get?",
            "money / | friends -> cost_per_friend : end | {pron} splits the cost equally among {n} friends. / {n} "
            "friends share the cost equally. | each friend pays {calc} dollars. | How many dollars does each friend pay?",
        ],
    ),
    _family(
        "sharing",
        [
            "treat/treats = candy/candies, cookie/cookies, grape/grapes, cracker/crackers, strawberry/strawberries, "
            "marble/marbles, card/cards",
            "member/members = friend/friends, child/children, classmate/classmates, cousin/cousins",
        ],
        ["pile | {treats} | {name} has {v} {treats}. / there are {v} {treats} in {name}'s bag."],
        [
            "pile + | {treats}_received -> total_{treats} : pile | {friend} gives {obj} {n} more {treats}. / {pron} finds "
            "{n} more {treats}. | {name} has {calc} {treats} in total. | How many {treats} does {name} have now?",
            "pile - | {treats}_eaten -> {treats}_left : pile | {pron} eats {n} of them. / {pron} eats {n} {treats}. "
            "| {name} has {calc} {treats} left. | How many {treats} does {name} have left?",
            "pile / | {members} -> {treats}_per_{member} : each | {pron} shares them equally among {n} {members}. / {pron} "
            "splits them equally between {n} {members}. | each {member} gets {calc} {treats}. "
            "| How many {treats} does each {member} get?",
            "each + | extra_{treats} -> {treats}_each_now : each | then {friend} gives each {member} {n} more {treats}. / "
            "each {member} also finds {n} more {treats}. | each {member} now has {calc} {treats}. "
            "| How many {treats} does each {member} have now?",
            "each - | {treats}_eaten_each -> {treats}_left_each : each | each {member} eats {n} of them. / each {member} "
            "gives {n} {treats} away. | each {member} has {calc} {treats} left. "
            "| How many {treats} does each {member} have left?",
        ],
    ),
    _family(
        "rates",
        ["vehicle = car, bus, train, truck, boat", "unit = miles, kilometers"],
        [
            "speed | speed | a {vehicle} travels at {v} {unit} per hour. / a {vehicle} goes {v} {unit} every hour.",
        ],
        [
            "speed + | speed_increase -> new_speed : speed | then it speeds up by {n} {unit} per hour. / later it goes "
            "{n} {unit} per hour faster. | the {vehicle} now goes {calc} {unit} per hour. "
            "| How many {unit} per hour does the {vehicle} go now?",
            "speed - | speed_decrease -> slower_speed : speed | then it slows down by {n} {unit} per hour. / in the rain "
            "it goes {n} {unit} per hour slower. | the {vehicle} now goes {calc} {unit} per hour. "
            "| How many {unit} per hour does the {vehicle} go now?",
            "speed * | hours -> distance : distance | it travels for {n} hours. / the trip takes {n} hours. "
            "| the {vehicle} travels {calc} {unit}. | How many {unit} does the {vehicle} travel?",
            "distance + | extra_distance -> total_distance : distance | after a break, it goes {n} more {unit}. / then "
            "it travels another {n} {unit}. | the {vehicle} travels {calc} {unit} in total. "
            "| How many {unit} does the {vehicle} travel in total?",
            "distance - | distance_back -> distance_from_start : distance | then it turns back for {n} {unit}. / it "
            "drives back {n} {unit} to pick someone up. | the {vehicle} is {calc} {unit} from the start. "
            "| How many {unit} from the start is the {vehicle}?",
            "distance r- | trip_length -> distance_left : end | the whole trip is {n} {unit} long. / the city is "
            "{n} {unit} away. | the {vehicle} still has {calc} {unit} to go. | How many {unit} are left to travel?",
            "distance / | sections -> section_length : end | the route is split into {n} equal sections. / the road "
            "has {n} equal sections. | each section is {calc} {unit} long. | How many {unit} long is each section?",
        ],
    ),
    _family(
        "reading",
        ["book = book, novel, comic book, story book"],
        [
            "rate | pages_per_day | {name} reads {v} pages a day. / {name} reads {v} pages every day.",
        ],
        [
            "rate + | extra_pages -> new_pages_per_day : rate | then {pron} reads {n} more pages each day. / {pron} "
            "decides to read {n} more pages a day. | {name} now reads {calc} pages a day. "
            "| How many pages a day does {name} read now?",
            "rate - | fewer_pages -> new_pages_per_day : rate | then {pron} reads {n} fewer pages each day. / {pron} "
            "gets busy and reads {n} fewer pages a day. | {name} now reads {calc} pages a day. "
            "| How many pages a day does {name} read now?",
            "rate * | days -> pages_read : pages | {pron} reads for {n} days. / {pron} keeps this up for {n} days. "
            "| {name} reads {calc} pages. | How many pages does {name} read?",
            "pages + | more_pages -> total_pages : pages | then {pron} reads {n} more pages. / on the weekend {pron} "
            "reads another {n} pages. | {name} reads {calc} pages in total. | How many pages does {name} read in total?",
            "pages - | picture_pages -> text_pages : pages | {n} of those pages are pictures. / {n} of the pages "
            "have only pictures. | {name} reads {calc} pages of text. | How many pages of text does {name} read?",
            "pages r- | book_pages -> pages_left : end | the {book} has {n} pages. / {poss} {book} is {n} pages long. "
            "| {name} has {calc} pages left to read. | How many pages does {name} have left to read?",
            "pages / | chapters -> pages_per_chapter : end | the pages make up {n} equal chapters. / those pages are "
            "{n} chapters of the same length. | each chapter has {calc} pages. | How many pages are in each chapter?",
        ],
    ),
    _family(
        "ages",
        [],
        ["age | {who_var}_age | {name} is {v} years old. / {name} just turned {v}."],
        [
            "age + shift | age_gap -> {next_var}_age : age | {next} is {n} years older than {who}. / {next} was born "
            "{n} years before {who}. | {next} is {calc} years old. | How old is {next}?",
            "age - shift | age_gap -> {next_var}_age : age | {next} is {n} years younger than {who}. / {next} was born "
            "{n} years after {who}. | {next} is {calc} years old. | How old is {next}?",
            "age * shift | age_factor -> {next_var}_age : age | {next} is {n} times as old as {who}. / {next}'s age is "
            "{n} times {who}'s age. | {next} is {calc} years old. | How old is {next}?",
            "age / shift | age_factor -> {next_var}_age : age | {who} is {n} times as old as {next}. / {who}'s age is "
            "{n} times {next}'s age. | {next} is {calc} years old. | How old is {next}?",
            "age + | years_later -> {who_var}_future_age : end | | in {n} years, {who} will be {calc} years old. "
            "| How old will {who} be in {n} years?",
            "age - | years_ago -> {who_var}_past_age : end | | {n} years ago, {who} was {calc} years old. "
            "| How old was {who} {n} years ago?",
        ],
        relatives=True,
        cap=90,
    ),
    _family(
        "recipes",
        [
            "ingr/ingr_var = cups of flour/flour, cups of sugar/sugar, eggs/eggs, spoons of butter/butter, "
            "cups of milk/milk, cups of oats/oats",
            "dish = pancakes, muffins, cookies, waffles, brownies",
        ],
        [
            "batch | {ingr_var}_per_batch | a batch of {dish} needs {v} {ingr}. / one batch of {dish} uses {v} {ingr}."
        ],
        [
            "batch + | extra_{ingr_var} -> {ingr_var}_per_batch_now : batch | {name} adds {n} more {ingr} to each "
            "batch. / {name} likes to use {n} extra {ingr} per batch. | one batch now uses {calc} {ingr}. "
            "| How many {ingr} does one batch use now?",
            "batch - | fewer_{ingr_var} -> {ingr_var}_used : batch | {name} uses {n} fewer {ingr} per batch. / {name} "
            "cuts {n} {ingr} from each batch. | {name} uses {calc} {ingr} per batch. "
            "| How many {ingr} does {name} use per batch?",
            "batch * | batches -> total_{ingr_var} : total | {name} makes {n} batches. / {name} bakes {n} batches "
            "for a party. | {name} needs {calc} {ingr}. | How many {ingr} does {name} need?",
            "total + | {ingr_var}_for_bread -> {ingr_var}_in_all : total | {pron} also needs {n} {ingr} for bread. / "
            "{pron} uses another {n} {ingr} for a cake. | {name} uses {calc} {ingr} in all. "
            "| How many {ingr} does {name} use in all?",
            "total - | {ingr_var}_at_home -> {ingr_var}_to_buy : end | {pron} already has {n} {ingr} at home. / there "
            "are {n} {ingr} in the kitchen. | {name} must buy {calc} {ingr}. | How many {ingr} must {name} buy?",
            "total / | bowls -> {ingr_var}_per_bowl : end | {pron} splits the {ingr_var} equally into {n} bowls. "
            "| each bowl gets {calc} {ingr}. | How many {ingr} go in each bowl?",
        ],
    ),
    _family(
        "savings",
        [
            "thing = toy, book, snack, poster, game",
            "goal = bike, tablet, guitar, telescope, skateboard",
        ],
        [
            "weekly | weekly_savings | {name} saves ${v} each week. / {name} puts ${v} in {poss} piggy bank every week."
        ],
        [
            "weekly + | extra_savings -> new_weekly_savings : weekly | then {pron} saves ${n} more each week. / {pron} "
            "starts saving an extra ${n} every week. | {name} now saves {calc} dollars a week. "
            "| How many dollars does {name} save each week now?",
            "weekly - | savings_cut -> new_weekly_savings : weekly | then {pron} saves ${n} less each week. / {pron} "
            "has to save ${n} less every week. | {name} now saves {calc} dollars a week. "
            "| How many dollars does {name} save each week now?",
            "weekly * | weeks -> savings : money | {pron} does this for {n} weeks. / {pron} saves for {n} weeks. "
            "| {name} saves {calc} dollars. | How many dollars does {name} save?",
            "money + | gift -> total_money : money | {poss} grandmother gives {obj} ${n}. / {pron} gets ${n} for "
            "{poss} birthday. | {name} has {calc} dollars in total. | How many dollars does {name} have in total?",
            "money - | {thing}_cost -> money_left : money | {pron} spends ${n} on a {thing}. / {pron} buys a {thing} "
            "for ${n}. | {name} has {calc} dollars left. | How many dollars does {name} have left?",
            "money r- | {goal}_price -> money_needed : end | {pron} wants a {goal} that costs ${n}. / a {goal} costs "
            "${n}. | {name} needs {calc} more dollars. | How many more dollars does {name} need for the {goal}?",
            "money / | charities -> money_per_charity : end | {pron} gives it all equally to {n} charities. / {pron} "
            "splits it equally among {n} charities. | each charity gets {calc} dollars. "
            "| How many dollars does each charity get?",
        ],
    ),
    _family(
        "garden",
        [
            "plant/plants/fruit = tomato plant/tomato plants/tomatoes, pepper plant/pepper plants/peppers, "
            "bean plant/bean plants/beans, strawberry plant/strawberry plants/strawberries",
        ],
        [
            "rows | rows | {name} plants {v} rows of {plants}. / {name}'s garden has {v} rows of {plants}.",
            "plants | {plants} | {name} grows {v} {plants}. / there are {v} {plants} in {name}'s garden.",
        ],
        [
            "rows + | new_rows -> total_rows : rows | then {pron} plants {n} more rows. / later {pron} adds {n} more "
            "rows. | {name} has {calc} rows. | How many rows of {plants} does {name} have?",
            "rows * | {plants}_per_row -> total_{plants} : plants | each row has {n} {plants}. / there are {n} "
            "{plants} in each row. | {name} has {calc} {plants}. | How many {plants} does {name} have?",
            "plants - | {plants}_lost -> {plants}_left : plants | rabbits eat {n} of the {plants}. / {n} of the "
            "{plants} die. | {name} has {calc} {plants} left. | How many {plants} does {name} have left?",
            "plants + | new_{plants} -> {plants}_now : plants | {friend} gives {obj} {n} more {plants}. / {pron} buys "
            "{n} more {plants}. | {name} now has {calc} {plants}. | How many {plants} does {name} have now?",
            "plants * | {fruit}_per_plant -> total_{fruit} : fruit | each {plant} grows {n} {fruit}. / every {plant} "
            "gives {n} {fruit}. | the plants grow {calc} {fruit}. | How many {fruit} do the plants grow?",
            "plants / | beds -> {plants}_per_bed : end | {pron} moves them equally into {n} beds. | each bed gets "
            "{calc} {plants}. | How many {plants} go in each bed?",
            "fruit - | {fruit}_given -> {fruit}_left : fruit | {pron} gives {n} {fruit} to {friend}. / {pron} uses {n} "
            "{fruit} for a salad. | {name} has {calc} {fruit} left. | How many {fruit} does {name} have left?",
            "fruit / | baskets -> {fruit}_per_basket : end | {pron} packs the {fruit} equally into {n} baskets. / "
            "{pron} puts the {fruit} into {n} baskets of the same size. | each basket holds {calc} {fruit}. "
            "| How many {fruit} are in each basket?",
        ],
    ),
    _family(
        "classroom",
        ["supply = pencils, crayons, folders, glue sticks, notebooks"],
        [
            "students | students | a class has {v} students. / there are {v} students in {name}'s class.",
        ],
        [
            "students + | new_students -> total_students : students | then {n} new students join the class. / {n} more "
            "students join after the break. | the class has {calc} students. | How many students are in the class now?",
            "students - | absent_students -> students_present : students | {n} students are absent today. / {n} "
            "students are home sick. | there are {calc} students in class today. | How many students are in class today?",
            "students / | group_size -> groups : groups | the teacher puts them in groups of {n}. / they form groups "
            "of {n} for a project. | there are {calc} groups. | How many groups are there?",
            "students * | {supply}_per_student -> total_{supply} : supplies | each student needs {n} {supply}. / every "
            "student gets {n} {supply}. | the class needs {calc} {supply}. | How many {supply} does the class need?",
            "groups + | extra_groups -> total_groups : groups | {n} more groups come from another class. | there are "
            "{calc} groups in all. | How many groups are there in all?",
            "groups * | {supply}_per_group -> total_{supply} : supplies | each group gets {n} {supply}. / the teacher "
            "gives every group {n} {supply}. | the groups get {calc} {supply}. "
            "| How many {supply} does the teacher hand out?",
            "supplies - | {supply}_in_stock -> {supply}_to_buy : end | the teacher already has {n} {supply}. / there "
            "are {n} {supply} in the closet. | the teacher must buy {calc} {supply}. "
            "| How many {supply} must the teacher buy?",
            "supplies / | box_size -> boxes : end | {supply} come in boxes of {n}. / a box holds {n} {supply}. "
            "| the teacher needs {calc} boxes. | How many boxes does the teacher need?",
        ],
    ),
    _family(
        "bakery",
        ["good/goods = muffin/muffins, bagel/bagels, croissant/croissants, donut/donuts, pie/pies"],
        [
            "goods | {goods} | a bakery bakes {v} {goods} in the morning. / a baker makes {v} {goods} before noon.",
        ],
        [
            "goods + | afternoon_{goods} -> total_{goods} : goods | {n} more {goods} are baked in the afternoon. / "
            "later, {n} more {goods} come out of the oven. | the bakery has {calc} {goods} in total. "
            "| How many {goods} does the bakery have in total?",
            "goods - | sold_{goods} -> {goods}_left : goods | {n} {goods} are sold by lunch. / customers buy {n} "
            "{goods}. | the bakery has {calc} {goods} left. | How many {goods} are left?",
            "goods / | {goods}_per_box -> boxes : boxes | the {goods} are packed in boxes of {n}. / each box holds {n} "
            "{goods}. | the bakery fills {calc} boxes. | How many boxes are filled?",
            "goods * | price_per_{good} -> sales : money | each {good} sells for ${n}. / the {goods} cost ${n} each. "
            "| the bakery earns {calc} dollars. | How many dollars does the bakery earn?",
            "boxes * | price_per_box -> box_sales : money | each box sells for ${n}. / a box costs ${n}. "
            "| the bakery earns {calc} dollars. | How many dollars does the bakery earn?",
            "boxes - | boxes_given -> boxes_left : end | {n} boxes go to a school. / {n} boxes are given away. "
            "| the bakery has {calc} boxes left. | How many boxes are left?",
            "money + | tips -> total_earnings : money | the bakery also gets ${n} in tips. | the bakery makes {calc} "
            "dollars in total. | How many dollars does the bakery make in total?",
            "money - | ingredient_cost -> profit : end | the ingredients cost ${n}. / the bakery spends ${n} on flour. "
            "| the bakery makes {calc} dollars in profit. | How many dollars of profit does the bakery make?",
        ],
    ),
    _family(
        "wages",
        [
            "day = Monday, Tuesday, Wednesday, Thursday, Friday, Saturday",
            "job = babysitting, walking dogs, mowing lawns, washing cars, tutoring",
        ],
        [
            "wage | hourly_wage | {name} earns ${v} an hour for {job}. / {name} is paid ${v} per hour for {job}."
        ],
        [
            "wage + | pay_raise -> new_wage : wage | {pron} gets a raise of ${n} an hour. / {poss} pay goes up by ${n} an "
            "hour. | {name} now earns {calc} dollars an hour. | How many dollars an hour does {name} earn now?",
            "wage - | pay_cut -> new_wage : wage | {poss} pay drops by ${n} an hour. / {pron} takes a pay cut of ${n} "
            "an hour. | {name} now earns {calc} dollars an hour. | How many dollars an hour does {name} earn now?",
            "wage * | hours -> pay : pay | {pron} works {n} hours on {day}. / on {day}, {pron} works for {n} hours. "
            "| {name} earns {calc} dollars on {day}. | How many dollars does {name} earn on {day}?",
            "pay + | tips -> total_pay : pay | {pron} also gets ${n} in tips. / {pron} gets a ${n} bonus. "
            "| {name} makes {calc} dollars in total. | How many dollars does {name} make in total?",
            "pay - | spent -> money_left : pay | {pron} spends ${n} on lunch. / {pron} pays ${n} for the bus. "
            "| {name} has {calc} dollars left. | How many dollars does {name} have left?",
            "pay / | envelopes -> money_per_envelope : end | {pron} divides the money equally into {n} envelopes. "
            "| each envelope gets {calc} dollars. | How many dollars go in each envelope?",
            "pay r- | savings_goal -> money_needed : end | {pron} wants to save ${n}. / {pron} needs ${n} for a trip. "
            "| {name} still needs {calc} dollars. | How many more dollars does {name} need?",
        ],
    ),
    _family(
        "collections",
        [
            "things/holders/holder = stamps/albums/album, stickers/albums/album, coins/jars/jar, "
            "baseball cards/boxes/box, shells/jars/jar, marbles/bags/bag",
        ],
        ["coll | {who_var}_{things} | {name} has {v} {things}. / {name} collects {v} {things}."],
        [
            "coll + | new_{things} -> {who_var}_{things}_now : coll | {who} gets {n} more {things}. / {who} finds {n} "
            "more {things}. | {who} now has {calc} {things}. | How many {things} does {who} have now?",
            "coll - | {things}_given -> {who_var}_{things}_left : coll | {who} gives away {n} {things}. / {who} trades "
            "away {n} {things}. | {who} has {calc} {things} left. | How many {things} does {who} have left?",
            "coll + shift | difference -> {next_var}_{things} : coll | {next} has {n} more {things} than {who}. "
            "| {next} has {calc} {things}. | How many {things} does {next} have?",
            "coll - shift | difference -> {next_var}_{things} : coll | {next} has {n} fewer {things} than {who}. "
            "| {next} has {calc} {things}. | How many {things} does {next} have?",
            "coll * shift | factor -> {next_var}_{things} : coll | {next} has {n} times as many {things} as {who}. "
            "| {next} has {calc} {things}. | How many {things} does {next} have?",
            "coll / | {holders} -> {things}_per_{holder} : end | {who} puts the {things} equally into {n} {holders}. "
            "| each {holder} holds {calc} {things}. | How many {things} are in each {holder}?",
        ],
    ),
    _family(
        "farm",
        [
            "animal/animals/verb/product/product_var = hen/hens/lays/eggs/eggs, duck/ducks/lays/eggs/eggs, "
            "cow/cows/gives/liters of milk/milk, goat/goats/gives/liters of milk/milk",
        ],
        [
            "animals | {animals} | farmer {name} has {v} {animals}. / there are {v} {animals} on {name}'s farm."
        ],
        [
            "animals + | new_{animals} -> total_{animals} : animals | {name} buys {n} more {animals}. / {n} more "
            "{animals} are born. | {name} has {calc} {animals}. | How many {animals} does {name} have now?",
            "animals - | sold_{animals} -> {animals}_left : animals | {name} sells {n} {animals}. / {name} gives {n} "
            "{animals} to a neighbor. | {name} has {calc} {animals} left. | How many {animals} does {name} have left?",
            "animals * | {product_var}_per_{animal} -> daily_{product_var} : product | each {animal} {verb} {n} "
            "{product} a day. | the {animals} give {calc} {product} a day. "
            "| How many {product} do the {animals} give each day?",
            "product * | days -> total_{product_var} : product | {name} collects them for {n} days. / this goes on for "
            "{n} days. | {name} collects {calc} {product}. | How many {product} does {name} collect in all?",
            "product - | kept_{product_var} -> {product_var}_to_sell : product | the family uses {n} {product}. / "
            "{name} keeps {n} {product} for the family. | {name} has {calc} {product} to sell. "
            "| How many {product} does {name} have to sell?",
            "product / | container_size -> containers : end | {name} fills containers that hold {n} {product} each. "
            "| {name} fills {calc} containers. | How many containers does {name} fill?",
        ],
    ),
    _family(
        "sports",
        [],
        [
            "points | first_game_points | {name} scores {v} points in the first game. / in the first game, {name} "
            "scores {v} points.",
            "shots | shots | {name} makes {v} shots in a game. / in a game, {name} makes {v} shots.",
        ],
        [
            "shots + | overtime_shots -> total_shots : shots | {pron} makes {n} more shots in overtime. | {name} "
            "makes {calc} shots in all. | How many shots does {name} make in all?",
            "shots * | points_per_shot -> points : points | each shot is worth {n} points. | {name} scores {calc} "
            "points. | How many points does {name} score?",
            "points + | second_game_points -> total_points : points | {pron} scores {n} points in the next game. / in "
            "the second game, {pron} scores {n} points. | {name} scores {calc} points in total. "
            "| How many points does {name} score in total?",
            "points - | penalty_points -> final_points : points | {n} points are taken away for a foul. / the referee "
            "takes away {n} points. | {name} ends up with {calc} points. | How many points does {name} end up with?",
            "points * | games -> season_points : points | {pron} scores the same in each of {n} games. | {name} scores "
            "{calc} points in all the games. | How many points does {name} score in all the games?",
            "points / | quarters -> points_per_quarter : end | {pron} scores the same in each of {n} quarters. / the "
            "points are split evenly over {n} quarters. | {name} scores {calc} points per quarter. "
            "| How many points does {name} score in each quarter?",
            "points r- | record -> points_to_record : end | the record is {n} points. | {name} needs {calc} more "
            "points to reach the record. | How many more points does {name} need to reach the record?",
        ],
    ),
)

_FEMALE = "Mia Emma Ava Sofia Lily Grace Chloe Zoe Nora Ella Maya Ruby Hannah Leah Anna Julia Sara Olivia Amelia Isla"
_MALE = "Liam Noah Ethan Lucas Mason Leo Jack Owen Ben Sam Max Adam Ryan Tom Alex Daniel Henry Omar Kai Luke"
_PEOPLE = [(n, "she", "her", "her") for n in _FEMALE.split()] + [
    (n, "he", "his", "him") for n in _MALE.split()
]
_NAMES = tuple(p[0] for p in _PEOPLE)
# Same-generation relatives only: "Mia's mother is 2 years old" reads wrong, "Mia's cousin is 2" does not.
_RELATIVES = ("brother", "sister", "cousin", "friend", "neighbor", "classmate", "teammate", "pen pal")
_RESERVED = {"result", "simple_math_problem"}


def snake_case(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _operand(rng: random.Random, op: str, value: int, d: Difficulty, cap: int | None) -> int | None:
    """A random operand for `op` on the running `value` keeping every number in range, or None."""
    if op == "/":
        divisors = [k for k in range(2, min(d.max_factor, value // 2) + 1) if value % k == 0]
        return rng.choice(divisors) if divisors else None
    top = min(d.max_result, cap or d.max_result)
    lo, hi = {
        "+": (2, min(d.max_number, top - value)),
        "-": (2, min(d.max_number, value - 2)),  # results stay >= 2: "1 apples" reads wrong
        "r-": (value + 2, min(d.max_number, top)),
        "*": (2, min(d.max_factor, top // value)),
    }[op]
    return rng.randint(lo, hi) if lo <= hi else None


def _apply(op: str, value: int, n: int) -> int:
    return {"+": value + n, "-": value - n, "r-": n - value, "*": value * n, "/": value // n}[op]


def _next_person(rng: random.Random, family: _Family, slots: dict[str, str], taken: set[str]) -> None:
    pool = _RELATIVES if family.relatives else _NAMES
    pick = rng.choice([p for p in pool if p not in taken])
    taken.add(pick)
    slots["next"] = f"{slots['name']}'s {pick}" if family.relatives else pick
    slots["next_var"] = snake_case(pick)


def _draft(
    rng: random.Random, family: _Family, d: Difficulty, n_steps: int, problem_id: str
) -> Problem | None:
    """One problem of `family` with `n_steps` steps, or None when the random walk hits a dead end."""
    name, pron, poss, obj = rng.choice(_PEOPLE)
    friend = rng.choice([n for n in _NAMES if n != name])
    slots = {
        "name": name,
        "pron": pron,
        "poss": poss,
        "obj": obj,
        "friend": friend,
        "who": name,
        "who_var": snake_case(name),
    }
    for names, entries in family.pools:
        slots.update(zip(names, rng.choice(entries), strict=True))
    taken = {name, friend}
    _next_person(rng, family, slots, taken)

    kind, quantity, sentences = rng.choice(family.starts)
    value = rng.randint(2, min(d.max_number, family.cap or d.max_number))
    used_names: set[str] = set()
    current = _unique(snake_case(quantity.format(**slots)), used_names)
    quantities = [Quantity(current, value)]
    text = [rng.choice(sentences).format(v=value, **slots)]
    steps: list[Step] = []
    used_moves: set[int] = set()
    for index in range(n_steps):
        last = index == n_steps - 1
        fitting = [
            i
            for i, m in enumerate(family.moves)
            if m.needs == kind and (last or m.gives in family.live_kinds)
        ]
        # Prefer moves not used yet (new wording) over repeating one; shuffle within each group.
        fresh = [i for i in fitting if i not in used_moves]
        repeats = [i for i in fitting if i in used_moves]
        order = rng.sample(fresh, len(fresh)) + rng.sample(repeats, len(repeats))
        for i in order:
            n = _operand(rng, family.moves[i].op, value, d, family.cap)
            if n is not None:
                break
        else:
            return None
        move = family.moves[i]
        used_moves.add(i)
        filled = {**slots, "n": n, "calc": "{calc}"}
        operand = _unique(snake_case(move.quantity.format(**filled)), used_names)
        result = _unique(snake_case(move.result.format(**filled)), used_names)
        quantities.append(Quantity(operand, n))
        left, right = (operand, current) if move.op == "r-" else (current, operand)
        value = _apply(move.op, value, n)
        steps.append(Step(result, move.op.lstrip("r"), left, right, value, move.statement.format(**filled)))
        sentence = rng.choice(move.sentences)
        if sentence:
            text.append(sentence.format(**filled))
        if last:
            text.append(move.question.format(**filled))
        if move.shift:
            slots["who"], slots["who_var"] = slots["next"], slots["next_var"]
            _next_person(rng, family, slots, taken)
        current, kind = result, move.gives
    question = " ".join(_capitalize(s) for s in text)
    return Problem(problem_id, family.name, question, value, tuple(quantities), tuple(steps))


def _unique(name: str, used: set[str]) -> str:
    candidate, k = name, 2
    while candidate in used or candidate in _RESERVED or keyword.iskeyword(candidate):
        candidate, k = f"{name}_{k}", k + 1
    used.add(candidate)
    return candidate


def fits(problem: Problem, d: Difficulty) -> bool:
    """Whether `problem` lies inside what difficulty `d` can generate (steps, numbers, factors)."""
    values = {q.name: q.value for q in problem.quantities}
    factors = [values[s.right] for s in problem.steps if s.op in "*/"]
    return (
        d.min_steps <= len(problem.steps) <= d.max_steps
        and all(q.value <= d.max_number for q in problem.quantities)
        and all(s.value <= d.max_result for s in problem.steps)
        and all(f <= d.max_factor for f in factors)
    )


def _generate_split(config: WorldConfig, split: str, n: int, seen: set[str]) -> list[Problem]:
    d = config.hard if split == "hard" else config.difficulty
    # A string seed is hashed with SHA-512 by `random`: stable across runs and Python processes.
    rng = random.Random(f"echochamber-world:{config.seed}:{split}")
    problems: list[Problem] = []
    misses = 0
    while len(problems) < n:
        family = rng.choice(FAMILIES)
        problem = _draft(
            rng, family, d, rng.randint(d.min_steps, d.max_steps), f"world-{split}-{len(problems):06d}"
        )
        if (
            problem is None
            or problem.question in seen
            or (split == "hard" and fits(problem, config.difficulty))
        ):
            misses += 1
            if misses >= _MAX_MISSES:
                raise UserError(
                    f"world split '{split}': only {len(problems)} of {n} distinct problems found; "
                    "lower its size or widen its difficulty"
                )
            continue
        misses = 0
        seen.add(problem.question)
        problems.append(problem)
    return problems


@functools.lru_cache(maxsize=2)  # a mixture asks for the same pool once per format
def _generate_cached(config_json: str, upto: str) -> dict[str, tuple[Problem, ...]]:
    config = from_dict(WorldConfig, json.loads(config_json))
    seen: set[str] = set()
    out: dict[str, tuple[Problem, ...]] = {}
    for split in _ORDER[: _ORDER.index(upto) + 1]:
        out[split] = tuple(_generate_split(config, split, getattr(config, f"n_{split}"), seen))
    return out


def generate_world(config: WorldConfig, splits: tuple[str, ...] = SPLITS) -> dict[str, list[Problem]]:
    """Split name -> problems, deterministic in `config`. Only the splits asked for are returned
    (splits generated before them in the fixed order are generated too, to keep them disjoint)."""
    config.validate()
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise UserError(f"unknown world split '{unknown[0]}' (choose from {', '.join(SPLITS)})")
    if not splits:
        return {}
    upto = max(splits, key=_ORDER.index)
    generated = _generate_cached(json.dumps(to_dict(config), sort_keys=True), upto)
    return {split: list(generated[split]) for split in splits}


def world_records(config: WorldConfig, split: str, style: str) -> list[Record]:
    """The problems of one split as records rendered in one style (prompt = question text)."""
    if style not in RENDER_STYLES:
        raise UserError(f"unknown world style '{style}' (choose from {', '.join(RENDER_STYLES)})")
    return [
        Record(
            id=p.id,
            prompt=p.question,
            solution=solution_text(p, style),
            answer=str(p.answer),
            source="world",
            style=style,
        )
        for p in generate_world(config, (split,))[split]
    ]


def write_world(config: WorldConfig, out_dir: Path) -> dict[str, Any]:
    """Write `{split}.{style}.jsonl` for every split and style plus `manifest.json`; return the manifest.

    Everything is written into a sibling temp folder that is renamed into place at the end, so a
    crash never leaves a folder that looks complete. An existing world folder is replaced; any
    other non-empty folder is refused rather than deleted.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not (
        out_dir.is_dir() and (_is_world_folder(out_dir) or not any(out_dir.iterdir()))
    ):
        raise UserError(f"{out_dir} exists and is not a world folder; choose a new --out")
    world = generate_world(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write_files(config, world, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # leave nothing half-written behind, then re-raise
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return manifest


def _is_world_folder(folder: Path) -> bool:
    """Whether `folder` holds a world written by this module (only such a folder may be replaced)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == "echochamber.data.world"


def _write_files(config: WorldConfig, world: dict[str, list[Problem]], folder: Path) -> dict[str, Any]:
    files = {}
    for split in SPLITS:
        for style in RENDER_STYLES:
            name = f"{split}.{style}.jsonl"
            with open(folder / name, "w") as fh:
                for problem in world[split]:
                    fh.write(json.dumps(render(problem, style)) + "\n")
            files[name] = len(world[split])
    manifest = {
        "generator": "echochamber.data.world",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "config_hash": config_hash(config),
        "config": to_dict(config),
        "counts": {split: len(world[split]) for split in SPLITS},
        "files": files,
        "families": {split: _family_counts(world[split]) for split in SPLITS},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _family_counts(problems: list[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.family] = counts.get(p.family, 0) + 1
    return dict(sorted(counts.items()))
