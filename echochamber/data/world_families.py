"""The controlled world's content: the family tables (moves, wording, item pools) and the people.

Kept apart from echochamber.data.world, which holds the generator that walks these tables, because
this is data, not logic: adding a family or rewording a move touches only this file, and the
generator stays short enough to read. Any change here changes the generated problems, so it must
come with a bump of world.GENERATOR_VERSION.
"""

from __future__ import annotations

from dataclasses import dataclass

# A family is written as small tables, one string per row:
#   pool:  "slot/slot2 = value/value2, value/value2, ..."   (one entry is drawn per problem)
#   start: "KIND | QUANTITY | sentence / sentence"           ({v} is the start value)
#   move:  "NEEDS OP [shift] | QUANTITY -> RESULT : GIVES | sentence / sentence | statement | question"
# OP is + - * / or r- (operand minus running value: "pays with a $20 bill"). {n} is the move's
# operand, {calc} the arithmetic. QUANTITY/RESULT become snake_case variable names. `shift` moves
# the subject on to {next} (ages, comparisons between people). A move that GIVES a kind no move
# needs ("end") can only come last. Every slot is filled from the person, friend and pools.


@dataclass(frozen=True)
class Move:
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
class Family:
    name: str
    pools: tuple[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], ...]
    starts: tuple[tuple[str, str, tuple[str, ...]], ...]
    moves: tuple[Move, ...]
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
) -> Family:
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
        parsed_moves.append(Move(needs, op, bool(flags), quantity, result, gives, said, statement, question))
    live = frozenset(m.needs for m in parsed_moves)
    return Family(name, tuple(parsed_pools), tuple(parsed_starts), tuple(parsed_moves), relatives, cap, live)


FAMILIES: tuple[Family, ...] = (
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
PEOPLE = [(n, "she", "her", "her") for n in _FEMALE.split()] + [
    (n, "he", "his", "him") for n in _MALE.split()
]
NAMES = tuple(p[0] for p in PEOPLE)
# Same-generation relatives only: "Mia's mother is 2 years old" reads wrong, "Mia's cousin is 2" does not.
RELATIVES = ("brother", "sister", "cousin", "friend", "neighbor", "classmate", "teammate", "pen pal")
