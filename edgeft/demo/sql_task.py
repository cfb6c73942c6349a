"""The demo task: messy English questions about a small shop database -> one SQLite query ("a terse SQL assistant").

Deterministic from a seed. Nothing the eval set asks was seen in training: every eval question uses phrasings that
no training example uses, and every eval answer is a query training never contains, because each (question kind,
value) combination belongs to one side only (about a fifth, at least two per kind, picked by hash, to eval). About
one eval question in four also names values training never contains at all (cities, categories, products, years,
ids, amounts of their own): the demo base is a real instruct model that can copy a value from the question, and
the eval measures whether the fine-tune kept that ability. The SQLite file is what `sql-exec` runs gold and
predicted queries on.

Example:
    write_task(Path(".cache/demo/data"))   # train.jsonl, eval.jsonl, shop.sqlite, schema.sql
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import string
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgeft.demo import refuse_foreign_task_folder, stamped_sets
from edgeft.demo.vocabulary import ADJECTIVES, CATEGORIES, CITIES, FIRST, LAST, NOUNS
from convert.common.fsutil import atomic_file

SEED = 1234
# Sized for a CPU: measured on SmolLM2-135M, ~1,300 SQL conversations (one epoch, 80 steps of 16) take the
# fine-tune from 0% to >95% sql-exec; more data costs training minutes and buys little.
N_TRAIN = 1300
N_EVAL = 200
N_GENERAL = 200  # generic chats mixed into training (not SQL; eval stays SQL only)

# Short on purpose: the fine-tune learns the schema from its examples, and every token here is paid for in each of
# the training sequences. The prompted base gets the schema spelled out instead (eval.system in the demo recipe).
SYSTEM_PROMPT = "You are a terse SQL assistant. Reply with one SQLite query for the shop database and nothing else."

SIGNUP_YEARS = range(2012, 2026)
ORDER_YEARS = range(2016, 2026)
# Questions name values from small sets, so each value recurs often enough in training for a tiny model to learn it.
ASKED_CITIES = CITIES[:8]
ASKED_CATEGORIES = CATEGORIES[:6]
PRICE_THRESHOLDS = range(100, 500, 50)
ASKED_SIGNUP_YEARS = range(2016, 2024)
ASKED_ORDER_YEARS = range(2018, 2025)
ASKED_IDS = range(1, 13)       # customer ids questions may name
ASKED_PRODUCTS = 12            # the first 12 products' names may be asked about
QUANTITIES = (3, 5, 8, 10)
EVAL_SHARE = 5                 # about one (question kind, value) combination in 5 is eval-only
UNSEEN_SHARE = 4               # about one eval question in 4 names values from UNSEEN_VALUES only
N_CUSTOMERS, N_PRODUCTS, N_ORDERS = 240, 120, 1500
# Values no training question or answer contains (disjoint from every ASKED set above), all present in the
# database. Quantities have none: every small number is a customer or product id somewhere in training.
UNSEEN_VALUES = {"city": CITIES[8:12], "category": CATEGORIES[6:8], "price": (75, 175, 325, 475),
                 "year": (2013, 2014, 2015), "oyear": (2025,), "cid": range(13, 21), "pid": range(13, 21)}
UNSEEN_PRODUCTS = range(ASKED_PRODUCTS, ASKED_PRODUCTS + 4)  # indexes into the product list


@dataclass(frozen=True)
class Intent:
    name: str
    sql: str
    train: tuple[str, ...]  # training patterns: {slot} values and {group} synonyms from WORDS, expanded at random
    eval: tuple[str, ...]   # phrasings only the eval set uses (never an expansion of a training pattern)


# Synonym groups the training patterns draw from, so training covers the *words* of the task in many orders and
# combinations: a new eval sentence is then new wording in a familiar style, not a foreign language.
WORDS = {
    "list": ("list", "show", "show me", "give me", "get", "find", "display", "fetch", "tell me", "pull up", "print"),
    "cust": ("customers", "clients", "people", "users", "buyers", "shoppers"),
    "prod": ("products", "items", "goods", "things", "articles"),
    "count": ("how many", "count", "count the", "number of", "the number of", "total number of"),
    "in": ("in", "from", "living in", "based in", "located in", "who live in", "that live in", "residing in"),
    "join": ("signed up in", "joined in", "registered in", "signed up during", "joined during", "registered during",
             "became customers in", "made an account in"),
    "avg": ("average price", "mean price", "avg price", "average cost", "mean cost", "typical price"),
    "below": ("less than", "cheaper than", "under", "below", "priced under", "priced below", "costing less than"),
    "above": ("more than", "pricier than", "over", "above", "priced over", "priced above", "costing more than",
              "more expensive than"),
    "cost": ("price", "cost", "price tag", "selling price"),
    "kind": ("category", "product category", "kind of product", "type of product", "section"),
    "orders": ("orders", "purchases", "sales"),
    "custid": ("customer {cid}", "customer #{cid}", "customer id {cid}", "customer number {cid}", "client {cid}",
            "client #{cid}", "user id {cid}"),
    "name": ("name", "full name", "customer name"),
    "please": ("", "", "", " please", " pls", " thanks", " thx", " for me", " now"),
}

# {slot} names: city, category, price, year (signup), oyear (order), cid, product; other {names} are WORDS groups.
# Gold queries stay under 13 words: longer ones would share 13-word n-grams with training answers, which the
# data check's decontamination rightly reports.
INTENTS = [
    Intent("customers_in_city", "SELECT name FROM customers WHERE city = '{city}';",
           ("{list} the {cust} {in} {city}{please}", "which {cust} are {in} {city}?", "who are the {cust} {in} {city}?",
            "{cust} {in} {city}{please}", "{list} all {city} {cust}", "names of {cust} {in} {city}",
            "{cust} whose city is {city}", "who lives in {city}?", "{city}: {list} the {cust}", "{city} {cust}?"),
           ("who lives in {city} among our clients?", "i need the client names for {city}")),
    Intent("count_city", "SELECT COUNT(*) FROM customers WHERE city = '{city}';",
           ("{count} {cust} {in} {city}?", "{count} {cust} are there {in} {city}{please}", "{count} {city} {cust}",
            "{cust} {in} {city}, how many?", "what is the {cust} count for {city}", "{city}: {count} {cust}?",
            "how many of our {cust} live in {city}", "{city} {cust} count{please}"),
           ("customers in {city}: how many are there?", "total clients located in {city}?")),
    Intent("products_in_category", "SELECT name FROM products WHERE category = '{category}';",
           ("{list} the {category} {prod}{please}", "which {prod} are in {category}?", "{list} {prod} in {category}",
            "what {prod} do we sell in {category}?", "{prod} of the {category} category", "{category} {prod}",
            "{list} all {prod} under {category}", "names of {category} {prod}", "{category}: which {prod}?"),
           ("{category} products, which ones?", "show me the items of the {category} category")),
    Intent("avg_price_category", "SELECT AVG(price) FROM products WHERE category = '{category}';",
           ("what is the {avg} of {category} {prod}?", "{avg} in {category}{please}", "{avg} for the {category} category",
            "{category} {prod}: {avg}?", "how much do {category} {prod} cost on average", "{category} {avg}",
            "{list} the {avg} of {prod} in {category}"),
           ("the {category} category: what is the average price?", "average cost of items in {category}")),
    Intent("cheaper_than", "SELECT name FROM products WHERE price < {price};",
           ("which {prod} cost {below} {price}?", "{list} {prod} {below} {price}{please}", "{prod} {below} {price}",
            "{list} {prod} {below} {price} dollars", "what can i buy for {below} {price}", "{list} all {prod} priced {below} {price}",
            "{below} {price}: which {prod}?", "{prod} with a price {below} {price}"),
           ("products under {price} dollars?", "items cheaper than {price}, which ones?")),
    Intent("pricier_than", "SELECT name FROM products WHERE price > {price};",
           ("which {prod} cost {above} {price}?", "{list} {prod} {above} {price}{please}", "{prod} {above} {price}",
            "{list} {prod} {above} {price} dollars", "what costs {above} {price}", "{list} all {prod} priced {above} {price}",
            "{above} {price}: which {prod}?", "{prod} with a price {above} {price}"),
           ("products over {price} dollars?", "items more expensive than {price}, which ones?")),
    Intent("signup_year", "SELECT name FROM customers WHERE signup_year = {year};",
           ("which {cust} {join} {year}?", "{list} {cust} who {join} {year}{please}", "who {join} {year}?",
            "{cust} with signup year {year}", "{list} everyone that {join} {year}", "{year}: which {cust} {join} it?",
            "names of {cust} that {join} {year}", "all {cust} who {join} {year}"),
           ("customers who signed up during {year}?", "who joined us in {year}?")),
    Intent("orders_in_year", "SELECT COUNT(*) FROM orders WHERE order_year = {oyear};",
           ("{count} {orders} in {oyear}?", "{count} {orders} were placed in {oyear}{please}",
            "{count} {orders} did we get in {oyear}", "total {orders} for year {oyear}", "{oyear}: {count} {orders}?",
            "{orders} made in {oyear}, how many?", "{oyear} {orders} count", "how many {orders} happened during {oyear}"),
           ("orders placed during {oyear}, how many?", "count of orders in {oyear}")),
    Intent("count_signups", "SELECT COUNT(*) FROM customers WHERE signup_year = {year};",
           ("{count} {cust} {join} {year}?", "{count} {cust} {join} {year}{please}", "{count} signups in {year}",
            "{count} registrations during {year}?", "{year}: {count} {cust} {join} it?", "{year} signup count",
            "{cust} who {join} {year}, how many?", "how many new {cust} did we get in {year}"),
           ("signups in {year}: how many?", "total customers that joined us in {year}?")),
    Intent("orders_of_customer_id", "SELECT COUNT(*) FROM orders WHERE customer_id = {cid};",
           ("{count} {orders} has {custid} placed?", "{count} {orders} by {custid}{please}", "{count} {orders} for {custid}",
            "how many times did {custid} order", "{custid}: {count} {orders}?", "{orders} of {custid}, how many?",
            "{custid} {orders} count"),
           ("number of orders of customer {cid}?", "how many orders came from customer id {cid}")),
    Intent("category_of_product", "SELECT category FROM products WHERE name = '{product}';",
           ("which {kind} is the {product} in?", "{kind} of the {product}?", "what {kind} is the {product}",
            "tell me the {kind} for {product}", "{product} {kind}{please}", "{product}: what {kind}?",
            "in which {kind} is {product}"),
           ("the {product}: which category?", "{product} belongs to what category?")),
    Intent("customer_by_id", "SELECT name FROM customers WHERE id = {cid};",
           ("what is the {name} of {custid}?", "who is {custid}?", "{name} of {custid}{please}", "{list} {custid}",
            "look up {custid}", "{custid}: {name}?", "{list} the {name} for {custid}"),
           ("customer id {cid}: what is the name?", "the name of customer #{cid}?")),
    Intent("price_of_product", "SELECT price FROM products WHERE name = '{product}';",
           ("what does the {product} cost?", "what is the {cost} of the {product}?", "how much is a {product}",
            "{list} the {cost} for {product}", "tell me what {product} sells for", "{product}: what {cost}?",
            "{product} {cost}{please}", "how much does the {product} cost"),
           ("the {product}: what is its price?", "cost of the {product}?")),
]


def _normal(template: str) -> str:
    return " ".join("".join(c for c in template.lower() if c.isalnum() or c in " {}").split())


def expand(pattern: str, rng: random.Random) -> str:
    """One training template from a pattern: each WORDS group replaced by a random member (slots stay {slot})."""
    def pick(match):
        group = match.group(1)
        return expand(rng.choice(WORDS[group]), rng) if group in WORDS else match.group(0)
    return re.sub(r"\{(\w+)\}", pick, pattern)


def all_expansions(pattern: str) -> set[str]:
    """Every template a pattern can produce (for the check that eval phrasings are never among them)."""
    match = next((m for m in re.finditer(r"\{(\w+)\}", pattern) if m.group(1) in WORDS), None)
    if match is None:
        return {pattern}
    return {t for word in WORDS[match.group(1)]
            for t in all_expansions(pattern[:match.start()] + word + pattern[match.end():])}


EVAL_TEMPLATES = {_normal(p) for intent in INTENTS for p in intent.eval}


# Eval phrasings are new sentences (never a training template) built mostly from words training uses: a 4.5M
# model cannot know that "tally" means count, but it should cope with a new word order.
# Messy-user noise: prefixes and the eval-only prefixes keep phrasing unseen too.
PREFIXES = (["", "", "", "", "hey ", "pls ", "quick question: ", "can you tell me ", "i want to know ", "hi, ",
             "ok so ", "please ", "could you check: ", "hmm ", "question: ", "boss asks: "],
            ["", "", "yo ", "so um ", "need this asap: "])


def slots_of(intent: "Intent") -> list[str]:
    return sorted({field for _, field, _, _ in string.Formatter().parse(intent.sql) if field})


def _asked_values(shop: "_Shop") -> dict[str, list]:
    return {"city": list(ASKED_CITIES), "category": list(ASKED_CATEGORIES), "price": list(PRICE_THRESHOLDS),
            "qty": list(QUANTITIES), "year": list(ASKED_SIGNUP_YEARS), "oyear": list(ASKED_ORDER_YEARS),
            "cid": list(ASKED_IDS), "pid": list(ASKED_IDS), "product": [p[1] for p in shop.products[:ASKED_PRODUCTS]]}


def eval_combinations(shop: "_Shop") -> dict[str, set[tuple]]:
    """Per question kind, the value combinations only eval asks: a fifth of them (at least one), picked by hash so
    the choice never depends on generation order."""
    import itertools

    asked = _asked_values(shop)
    chosen: dict[str, set[tuple]] = {}
    taken: set[str] = set()  # a value is eval-only in one kind of question at most, so training sees it elsewhere
    for intent in INTENTS:
        combos = list(itertools.product(*(asked[slot] for slot in slots_of(intent))))
        combos.sort(key=lambda c: zlib.crc32(repr((intent.name, c)).encode()))
        picked = [c for c in combos if not taken & {str(v) for v in c}][: max(2, len(combos) // EVAL_SHARE)]
        taken.update(str(v) for c in picked for v in c)
        chosen[intent.name] = set(picked)
    return chosen


class _Shop:
    """The database rows, generated once from the seed; names are split into training and held-out halves."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        names = sorted({f"{f} {l}" for f in FIRST for l in LAST})
        rng.shuffle(names)
        self.customers = [(i + 1, names[i], rng.choice(CITIES), rng.choice(list(SIGNUP_YEARS)))
                          for i in range(N_CUSTOMERS)]
        products = sorted({f"{a} {NOUNS[c]}": c for a in ADJECTIVES for c in CATEGORIES}.items())
        rng.shuffle(products)
        self.products = [(i + 1, name, cat, rng.randint(5, 500)) for i, (name, cat) in enumerate(products[:N_PRODUCTS])]
        self.orders = [(i + 1, rng.randint(1, N_CUSTOMERS), rng.randint(1, N_PRODUCTS), rng.randint(1, 12),
                        rng.choice(list(ORDER_YEARS))) for i in range(N_ORDERS)]

    def slot_values(self, rng: random.Random, *, unseen: bool = False) -> dict:
        seen = self._seen_values(rng)
        if not unseen:
            return seen
        values = {slot: rng.choice(list(choices)) for slot, choices in UNSEEN_VALUES.items()}
        return {**seen, **values, "product": self.products[rng.choice(list(UNSEEN_PRODUCTS))][1]}

    def _seen_values(self, rng: random.Random) -> dict:
        return {
            "city": rng.choice(ASKED_CITIES),
            "category": rng.choice(ASKED_CATEGORIES),
            "price": rng.choice(PRICE_THRESHOLDS),
            "qty": rng.choice(QUANTITIES),
            "year": rng.choice(ASKED_SIGNUP_YEARS),
            "oyear": rng.choice(ASKED_ORDER_YEARS),
            "cid": rng.choice(ASKED_IDS),
            "pid": rng.choice(ASKED_IDS),
            "product": rng.choice(self.products[:ASKED_PRODUCTS])[1],
        }


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swap two letters
    if kind == 1:
        return word[:i] + word[i + 1:]  # drop one
    return word[:i] + word[i] + word[i:]  # double one


def messy(text: str, rng: random.Random, protected: set[str]) -> str:
    """Make a question look typed in a hurry: lower case, lost punctuation, a typo, stray spaces.

    Words in `protected` (the slot values) are left intact so the gold query stays well defined."""
    words = text.split(" ")
    out = []
    lower = rng.random() < 0.5
    for word in words:
        if word.strip("?.,#") not in protected:
            if lower:
                word = word.lower()
            if len(word) >= 5 and word.isalpha() and rng.random() < 0.12:
                word = _typo(word, rng)
        out.append(word)
    text = " ".join(out)
    if rng.random() < 0.4:
        text = text.rstrip("?.!")
    if rng.random() < 0.1:
        text = text.replace(" ", "  ", 1)
    return text


def _protected_words(values: dict) -> set[str]:
    return {w for v in values.values() for w in str(v).split()}


def _conversation(question: str, sql: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": sql}]}


def generate(n_train: int = N_TRAIN, n_eval: int = N_EVAL, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Train and eval conversations. Intents are balanced; user texts are unique across both sets."""
    shop = _Shop(seed)
    eval_only = eval_combinations(shop)
    rng = random.Random(seed + 1)
    seen_questions: set[str] = set()
    train_answers: set[str] = set()
    train_values: set[str] = set()
    sets: dict[bool, list[dict]] = {False: [], True: []}
    for held_out, count in ((False, n_train), (True, n_eval)):
        attempts = 0
        while len(sets[held_out]) < count:
            attempts += 1
            if attempts > count * 200:
                raise RuntimeError("demo generator cannot find enough distinct questions; lower the counts")
            intent = INTENTS[len(sets[held_out]) % len(INTENTS)]
            # Decided by position (hashed, so not in step with the intent cycle): a per-attempt draw would favour
            # unseen values, which are never rejected, while seen-value eval combinations are rare.
            # A kind of question without a slot that has unseen values (quantities) stays a seen-value one.
            unseen = (held_out and zlib.crc32(b"unseen%d" % len(sets[True])) % UNSEEN_SHARE == 0
                      and bool(set(slots_of(intent)) & {*UNSEEN_VALUES, "product"}))
            values = shop.slot_values(rng, unseen=unseen)
            used = {slot: values[slot] for slot in slots_of(intent)}
            if not unseen:
                if (tuple(used.values()) in eval_only[intent.name]) != held_out:
                    continue
                if held_out and not all(str(value) in train_values for value in used.values()):
                    continue  # a seen-value eval question: each value was seen in training, in another kind
            if held_out:
                phrasing = rng.choice(intent.eval)
            else:
                phrasing = expand(rng.choice(intent.train), rng)
                if _normal(phrasing) in EVAL_TEMPLATES:
                    continue  # an expansion that happens to be an eval phrasing stays eval's
            prefix = rng.choice(PREFIXES[1] if held_out else PREFIXES[0])
            question = messy(prefix + phrasing.format(**values), rng, _protected_words(values))
            sql = intent.sql.format(**values)
            key = " ".join(question.lower().split())
            if key in seen_questions or (held_out and sql in train_answers):
                continue
            seen_questions.add(key)
            if not held_out:
                train_answers.add(sql)
                train_values.update(str(value) for value in used.values())
            sets[held_out].append(_conversation(question, sql))
    return sets[False], sets[True]


def schema_sql() -> str:
    return resources.files("edgeft.demo").joinpath("schema.sql").read_text()


def build_database(path: Path, seed: int = SEED) -> Path:
    """Create the SQLite file from the shipped schema and the generated rows (atomically)."""
    shop = _Shop(seed)
    with atomic_file(path, suffix=".sqlite") as tmp:
        tmp.unlink()  # sqlite wants to create the file itself
        with sqlite3.connect(tmp) as db:
            db.executescript(schema_sql())
            db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", shop.customers)
            db.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", shop.products)
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", shop.orders)
        db.close()
    return path


def write_jsonl(rows: list[dict], path: Path) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_task(out_dir: Path, *, seed: int = SEED, n_train: int = N_TRAIN, n_eval: int = N_EVAL,
               n_general: int = N_GENERAL) -> dict[str, Path]:
    """Write train.jsonl (the SQL conversations plus `n_general` generic chats, shuffled), eval.jsonl (SQL only),
    shop.sqlite and schema.sql into `out_dir`, after its stamp task.json; returns their paths. A folder that holds
    anything else is refused, before anything is written."""
    out_dir = Path(out_dir)
    refuse_foreign_task_folder(out_dir)
    train, evaluation = stamped_sets(out_dir, "edgeft demo data", generate, seed=seed, n_train=n_train,
                                     n_eval=n_eval, n_general=n_general)
    paths = {
        "train": write_jsonl(train, out_dir / "train.jsonl"),
        "eval": write_jsonl(evaluation, out_dir / "eval.jsonl"),
        "db": build_database(out_dir / "shop.sqlite", seed),
    }
    with atomic_file(out_dir / "schema.sql") as tmp:
        tmp.write_text(schema_sql())
    paths["schema"] = out_dir / "schema.sql"
    return paths
