"""Synthetic LLM-agent traces with ground-truth task labels: the advisor's test data, demo and benchmark.

``generate(n, seed)`` returns ``n`` captured calls as the usage store's export holds them (the fields of
``capture.record.CaptureRecord``, schema version 1) plus ``label``, the task that produced each call
(``TASK_TYPES``). The advisor must find these tasks without reading ``label``; the tests score it against them.

What it models: one week of a company's agent traffic through one route, in a daily rhythm (busy working
hours, quiet nights, quieter weekends). A few dozen agents (``caller``, a salted-hash-looking id) call an LLM
(``gpt-4o``, ``gpt-4.1``, ...) for twelve recurring tasks an SLM could take over, plus open-ended chat that must
stay on the LLM (``OPEN_CHAT``). Each task is called by two to five agents, each with its own paraphrase of the
system prompt (and now and then a newer prompt version); some agents serve several tasks, so neither the caller
nor the system prompt alone gives the task away. User turns are templates filled with random names, companies,
amounts, dates, products, cities, order numbers, emails, phone numbers and IBANs (so PII is present), of very
different lengths (a one-line chat message, a thirty-line invoice); some carry few-shot examples or earlier
turns. The answers are consistent with the request: the JSON keys the prompt asks for, a tool call naming an
offered tool, SQL for the one schema in the prompt, three bullets, a test module. Token counts are estimated at
about four characters a token, and latency is an LLM's: a few hundred milliseconds plus 20 to 40 ms per
completion token. Calls are not streamed, so ``ttft_ms`` (first byte sent to the caller) is just under
``total_ms``.

Some tasks are deliberately close: intent routing, ticket tagging, review rating and translation all read
customer messages built from the same sentences; invoice and contact extraction both turn business documents
into JSON; tool selection and open chat share a system prompt; open chat sometimes asks for a summary of meeting
notes like the summarisation task's or for an email.

Pure: stdlib only, one seeded ``random.Random`` (same ``n`` and seed, same records), no I/O except
``write_jsonl`` writing to the stream it is given.
"""

from __future__ import annotations

import bisect
import gc
import json
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO, TypeVar

if TYPE_CHECKING:
    from _typeshed import SupportsLenAndGetItem

T = TypeVar("T")

OPEN_CHAT = "open-chat"

# --- values -----------------------------------------------------------------------------------------------------

FIRST_NAMES = (
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lea", "Marta",
    "Noah", "Olga", "Pedro", "Quentin", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Xenia", "Yusuf", "Zoe",
    "Liam", "Mia", "Lukas", "Sofia", "Mateo", "Chloé", "Aisha", "Jan", "Priya", "Tomás", "Emma", "Oskar", "Nadia",
    "Ravi", "Hannah", "Giulia", "Sean", "Amélie", "Björn", "Leila", "Kofi", "Mei", "Diego", "Ingrid",
)  # fmt: skip
LAST_NAMES = (
    "Müller", "Schmidt", "Rossi", "García", "Martin", "Dubois", "Jansen", "de Vries", "Novak", "Kowalski", "Smith",
    "Johnson", "Brown", "Nguyen", "Kim", "Patel", "Silva", "Santos", "Fischer", "Weber", "Moreau", "Bianchi",
    "Lindqvist", "Hansen", "O'Brien", "Murphy", "Costa", "Yilmaz", "Ivanova", "Tanaka", "Fernández", "López",
    "Bakker", "Meyer", "Wagner", "Romano", "Larsen", "Walsh", "Chen", "Ali", "Okafor", "Haddad", "Berg", "Kaur",
)  # fmt: skip
_COMPANY_STEMS = (
    "Northwind", "Bluepeak", "Alder", "Copperline", "Helio", "Brightwater", "Kestrel", "Lumen", "Meridian",
    "Oakridge", "Pinecrest", "Redwood", "Silverline", "Tidewater", "Vantage", "Westbrook", "Zephyr", "Granite",
    "Harbor", "Ironbridge", "Juniper", "Larkspur", "Mosaic", "Nimbus", "Aurora", "Bellwether", "Cobalt", "Driftwood",
)  # fmt: skip
_COMPANY_KINDS = (
    "Logistics", "Software", "Consulting", "Foods", "Energy", "Systems", "Media", "Health", "Labs", "Supply",
    "Analytics", "Design", "Robotics", "Textiles", "Print", "Freight", "Interiors", "Payments",
)  # fmt: skip
_LEGAL = (
    ("GmbH", "de"),
    ("Ltd", "co.uk"),
    ("Inc.", "com"),
    ("B.V.", "nl"),
    ("SAS", "fr"),
    ("S.r.l.", "it"),
    ("AG", "ch"),
    ("LLC", "com"),
    ("AB", "se"),
    ("S.L.", "es"),
)
_MAIL_DOMAINS = (
    "gmail.com",
    "outlook.com",
    "web.de",
    "gmx.net",
    "yahoo.fr",
    "proton.me",
    "icloud.com",
    "hotmail.co.uk",
    "libero.it",
    "ziggo.nl",
)
_JOB_TITLES = (
    "Head of Procurement", "Account Executive", "Sales Manager", "CFO", "Office Manager", "Project Lead",
    "Senior Buyer", "Customer Success Manager", "Operations Director", "Founder & CEO", "Partnerships Lead",
    "Facility Manager", "IT Administrator", "Marketing Coordinator",
)  # fmt: skip


class _City(NamedTuple):
    name: str
    cc: str
    country: str
    postcode: str  # "#" a digit, "@" a capital letter
    phone: str
    streets: tuple[str, ...]
    number_first: bool
    region: str = ""


CITIES = (
    _City("Berlin", "DE", "Germany", "1####", "+49 30 ### ####", ("Hauptstraße", "Friedrichstraße", "Lindenallee"), False),
    _City("Munich", "DE", "Germany", "8####", "+49 89 ### #####", ("Leopoldstraße", "Sendlinger Straße"), False),
    _City("Hamburg", "DE", "Germany", "2####", "+49 40 #### ####", ("Mönckebergstraße", "Elbchaussee"), False),
    _City("Paris", "FR", "France", "750##", "+33 1 ## ## ## ##", ("rue de Rivoli", "boulevard Voltaire"), True),
    _City("Lyon", "FR", "France", "6900#", "+33 4 ## ## ## ##", ("rue de la République", "cours Lafayette"), True),
    _City("Madrid", "ES", "Spain", "280##", "+34 91 ### ## ##", ("Calle Mayor", "Calle de Alcalá"), False),
    _City("Barcelona", "ES", "Spain", "080##", "+34 93 ### ## ##", ("Carrer de Mallorca", "Passeig de Gràcia"), False),
    _City("Milan", "IT", "Italy", "201##", "+39 02 #### ####", ("Via Torino", "Corso Buenos Aires"), False),
    _City("Rome", "IT", "Italy", "001##", "+39 06 #### ####", ("Via del Corso", "Via Nazionale"), False),
    _City("Amsterdam", "NL", "Netherlands", "10## @@", "+31 20 ### ####", ("Prinsengracht", "Damrak"), False),
    _City("Rotterdam", "NL", "Netherlands", "30## @@", "+31 10 ### ####", ("Coolsingel", "Witte de Withstraat"), False),
    _City("London", "GB", "United Kingdom", "@@# #@@", "+44 20 #### ####", ("Baker Street", "Old Kent Road"), True),
    _City("Manchester", "GB", "United Kingdom", "M# #@@", "+44 161 ### ####", ("Deansgate", "Oxford Road"), True),
    _City("New York", "US", "United States", "100##", "+1 212-555-0###", ("Broadway", "Lexington Avenue"), True, "NY"),
    _City("Austin", "US", "United States", "787##", "+1 512-555-0###", ("Congress Avenue", "East 6th Street"), True, "TX"),
    _City("Seattle", "US", "United States", "981##", "+1 206-555-0###", ("Pine Street", "Westlake Avenue"), True, "WA"),
    _City("Toronto", "CA", "Canada", "M#@ #@#", "+1 416-555-0###", ("King Street West", "Bloor Street"), True, "ON"),
    _City("Vienna", "AT", "Austria", "1###", "+43 1 ### ####", ("Mariahilfer Straße", "Praterstraße"), False),
    _City("Zurich", "CH", "Switzerland", "80##", "+41 44 ### ## ##", ("Bahnhofstrasse", "Langstrasse"), False),
    _City("Dublin", "IE", "Ireland", "D0# @###", "+353 1 ### ####", ("Grafton Street", "Dame Street"), True),
    _City("Stockholm", "SE", "Sweden", "1## ##", "+46 8 ### ### ##", ("Drottninggatan", "Götgatan"), False),
    _City("Copenhagen", "DK", "Denmark", "1###", "+45 ## ## ## ##", ("Nørrebrogade", "Vesterbrogade"), False),
    _City("Lisbon", "PT", "Portugal", "1###-###", "+351 21 ### ####", ("Rua Augusta", "Avenida da Liberdade"), False),
)  # fmt: skip
_POSTCODE_AFTER = frozenset({"GB", "IE"})
_REGION_STYLE = frozenset({"US", "CA"})

PRODUCTS = (
    ("wireless earbuds", 39, 189), ("standing desk", 249, 899), ("espresso machine", 149, 1299),
    ("running shoes", 59, 179), ("office chair", 129, 749), ("4K monitor", 199, 699), ("robot vacuum", 179, 649),
    ("yoga mat", 19, 89), ("air purifier", 89, 399), ("e-reader", 99, 249), ("hiking backpack", 49, 229),
    ("smart thermostat", 99, 279), ("electric toothbrush", 29, 199), ("cast-iron pan", 25, 120),
    ("mechanical keyboard", 69, 229), ("baby monitor", 49, 199), ("bike helmet", 35, 160), ("phone case", 9, 49),
    ("winter jacket", 79, 399), ("coffee grinder", 29, 249), ("desk lamp", 19, 149), ("duvet set", 39, 189),
    ("gaming headset", 39, 249), ("kitchen scale", 12, 59), ("water filter jug", 15, 49),
)  # fmt: skip
_COMPAT = (
    "my iPhone 15",
    "a Samsung Galaxy S24",
    "Windows 11",
    "a MacBook Air",
    "Alexa",
    "Google Home",
    "the older model",
    "an IKEA desk",
    "a 220 V socket in the UK",
)
_COLORS = ("black", "navy blue", "forest green", "white", "sand", "graphite", "red", "pastel pink")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_TEAMS = (
    "Platform",
    "Payments",
    "Growth",
    "Data",
    "Mobile",
    "Customer Care",
    "Finance",
    "Logistics",
    "Sales",
)
_PROJECTS = ("Atlas", "Beacon", "Cascade", "Delta", "Ember", "Falcon", "Granite", "Horizon", "Iris", "Juno")
_SLUG = str.maketrans(
    {
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "ß": "ss",
        "é": "e",
        "è": "e",
        "á": "a",
        "í": "i",
        "ó": "o",
        "ú": "u",
        "ç": "c",
        "ø": "o",
        "å": "a",
        " ": "",
        "'": "",
        "-": "",
    }
)
_HEX = "0123456789abcdef"
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def _slug(text: str) -> str:
    return text.lower().translate(_SLUG)


def _iso(d: date) -> str:
    return d.isoformat()


def _date_text(d: date, style: int) -> str:
    """A date as people write it: ISO, 14.03.2026, 14/03/2026, 03/14/2026 or 14 March 2026."""
    if style == 0:
        return d.isoformat()
    if style == 1:
        return f"{d.day:02d}.{d.month:02d}.{d.year}"
    if style == 2:
        return f"{d.day:02d}/{d.month:02d}/{d.year}"
    if style == 3:
        return f"{d.month:02d}/{d.day:02d}/{d.year}"
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def _money(amount: float, comma: bool = False) -> str:
    """1,234.50 or, European style, 1.234,50."""
    text = f"{amount:,.2f}"
    return text.replace(",", "_").replace(".", ",").replace("_", ".") if comma else text


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _bullets(items: Iterable[str], mark: str = "- ") -> str:
    return "\n".join(mark + item for item in items)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class _Random(random.Random):
    """``random.Random`` with a faster ``choice`` and ``randint`` (one float each instead of a loop over bits);
    the records are built from a few hundred of these draws each."""

    def choice(self, seq: SupportsLenAndGetItem[T]) -> T:
        return seq[int(self.random() * len(seq))]

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))


class _Fake:
    """Random values for the templates, all drawn from one seeded ``random.Random``."""

    __slots__ = ("r",)

    def __init__(self, r: _Random) -> None:
        self.r = r

    def fill(self, pattern: str) -> str:
        """``pattern`` with each ``#`` a random digit and each ``@`` a random capital letter (at most 38 ``#``)."""
        pieces = pattern.split("#")
        digits = "%038d" % self.r.getrandbits(126)  # noqa: UP031 (the fastest way to 38 digits)
        text = pieces[0] + "".join(
            d + p for d, p in zip(digits[-len(pieces) + 1 :], pieces[1:], strict=False)
        )
        if "@" in text:
            text = "".join(self.r.choice(_LETTERS) if c == "@" else c for c in text)
        return text

    def hex(self, length: int) -> str:
        return f"{self.r.getrandbits(4 * length):0{length}x}"

    def email(self, first: str, last: str, domain: str | None = None) -> str:
        r = self.r
        f, last_slug = _slug(first), _slug(last)
        if domain is None:
            domain = r.choice(_MAIL_DOMAINS)
            pattern = r.randrange(5)
            local = (
                f"{f}.{last_slug}",
                f"{f}{last_slug}{r.randint(1, 99)}",
                f"{f}_{last_slug}",
                f"{f[0]}{last_slug}",
                f"{f}{r.randint(1970, 2005)}",
            )[pattern]
        else:
            local = (f"{f}.{last_slug}", f"{f[0]}.{last_slug}", f)[self.r.randrange(3)]
        return f"{local}@{domain}"

    def phone(self, city: _City | None = None) -> str:
        number = self.fill((city or self.r.choice(CITIES)).phone)
        return number.replace(" ", "") if self.r.random() < 0.2 else number

    def company(self) -> tuple[str, str]:
        """A company name and its web domain."""
        r = self.r
        stem, kind = r.choice(_COMPANY_STEMS), r.choice(_COMPANY_KINDS)
        legal, tld = r.choice(_LEGAL)
        return f"{stem} {kind} {legal}", f"{_slug(stem)}-{_slug(kind)}.{tld}"

    def day(self, first: date = date(2026, 1, 5), span: int = 330) -> date:
        return first + timedelta(days=self.r.randrange(span))

    def order_no(self) -> str:
        return self.fill(
            self.r.choice(("#######", "ORD-#######", "A########", "###-#######-#######", "SO-####-###"))
        )

    def address(self, city: _City | None = None) -> tuple[_City, str, str, str, str]:
        """City, street, house number, postcode and the address as one line in the country's order."""
        r = self.r
        city = city or r.choice(CITIES)
        street = r.choice(city.streets)
        number = str(r.randint(1, 240 if city.number_first else 120))
        if r.random() < 0.08:
            number += r.choice("abc")
        postcode = self.fill(city.postcode)
        road = f"{number} {street}" if city.number_first else f"{street} {number}"
        if city.cc in _REGION_STYLE:
            line = f"{road}, {city.name}, {city.region} {postcode}"
        elif city.cc in _POSTCODE_AFTER:
            line = f"{road}, {city.name} {postcode}"
        else:
            line = f"{road}, {postcode} {city.name}"
        return city, street, number, postcode, line

    def iban(self, cc: str) -> str:
        """A valid IBAN (the check digits are right) of a country that uses one."""
        bban = self.fill(_IBAN_BBAN.get(cc, "##################"))
        numeric = "".join(str(int(ch, 36)) for ch in bban + cc + "00")
        return f"{cc}{98 - int(numeric) % 97:02d}{bban}"


_IBAN_BBAN = {
    "DE": "##################",
    "GB": "@@@@##############",
    "FR": "#######################",
    "NL": "@@@@##########",
    "ES": "####################",
    "IT": "@######################",
    "AT": "################",
    "IE": "@@@@##############",
}


def _grouped(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


class _Vals(dict[str, str]):
    """Template values, each drawn the first time a template names it and the same on reuse (``format_map``)."""

    def __init__(self, fake: _Fake, **known: str) -> None:
        super().__init__(known)
        self.fake = fake

    def __missing__(self, key: str) -> str:
        value = _VALUE[key](self.fake, self)
        self[key] = value
        return value


def _v_email(f: _Fake, v: _Vals) -> str:
    return f.email(v["first"], v["last"])


def _v_address(f: _Fake, v: _Vals) -> str:
    return f.address()[4]


def _v_amount(f: _Fake, v: _Vals) -> str:
    r = f.r
    value = _money(r.uniform(9, 900))
    return r.choice((f"€{value}", f"{value} EUR", f"${value}", f"£{value}", f"{value} euros"))


_VALUE: dict[str, Callable[[_Fake, _Vals], str]] = {
    "first": lambda f, v: f.r.choice(FIRST_NAMES),
    "last": lambda f, v: f.r.choice(LAST_NAMES),
    "full": lambda f, v: f"{v['first']} {v['last']}",
    "first2": lambda f, v: f.r.choice(FIRST_NAMES),
    "email": _v_email,
    "phone": lambda f, v: f.phone(),
    "order": lambda f, v: f.order_no(),
    "product": lambda f, v: f.r.choice(PRODUCTS)[0],
    "date": lambda f, v: _date_text(f.day(), f.r.randrange(5)),
    "days": lambda f, v: str(f.r.randint(2, 21)),
    "n": lambda f, v: str(f.r.randint(2, 9)),
    "pct": lambda f, v: str(f.r.randrange(10, 96, 5)),
    "city": lambda f, v: f.r.choice(CITIES).name,
    "address": _v_address,
    "other": lambda f, v: f.r.choice(_COMPAT),
    "color": lambda f, v: f.r.choice(_COLORS),
    "amount": _v_amount,
    "company": lambda f, v: f.company()[0],
    "weekday": lambda f, v: f.r.choice(_WEEKDAYS),
    "time": lambda f, v: f"{f.r.randint(8, 17)}:{f.r.choice(('00', '15', '30', '45'))}",
    "team": lambda f, v: f.r.choice(_TEAMS),
    "project": lambda f, v: f.r.choice(_PROJECTS),
    "version": lambda f, v: f"{f.r.randint(1, 5)}.{f.r.randint(0, 14)}",
    "quarter": lambda f, v: f"Q{f.r.randint(1, 4)}",
    "k": lambda f, v: str(f.r.choice((3, 5, 5, 10, 10, 20))),
}


# --- one call ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    """What a task builder makes: the prompt and the answer, before it becomes a request and a response."""

    system: str
    user: str
    content: str | None = None
    tool: tuple[str, dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    json_mode: bool = False
    before: list[dict[str, Any]] = field(default_factory=list)  # few-shot examples or earlier turns


@dataclass(frozen=True, slots=True)
class _Task:
    label: str
    share: float
    build: Callable[[_Fake, int], _Call]
    variants: int  # system-prompt variants the builder knows
    temperature: tuple[float, float]
    few_shot: float = 0.0  # chance that a call carries one to three worked examples as earlier turns


# --- customer messages: intent routing, ticket tagging ----------------------------------------------------------

_INTENTS: dict[str, tuple[str, ...]] = {
    "order_status": (
        "Where is my order {order}? I ordered the {product} on {date} and haven't heard anything since.",
        "Can you tell me when order {order} will arrive?",
        "Any update on {order}? The tracking page has said 'label created' for {days} days now.",
        "my {product} still hasnt shipped, order number {order}",
        "The parcel for {order} seems stuck in {city} since {date}. What is going on?",
    ),
    "cancel_order": (
        "Please cancel order {order}, I picked the wrong {product}.",
        "I'd like to cancel my order from {date} ({order}) before it ships.",
        "Cancel {order} please. Found the {product} cheaper elsewhere.",
        "Is it still possible to cancel? Order {order}, placed {date}.",
    ),
    "refund_request": (
        "I sent the {product} back on {date} and still have not received my refund of {amount}.",
        "I want my money back for order {order}, the {product} stopped working after {days} days.",
        "How long does a refund take? My return for {order} was delivered to you on {date}.",
        "Please refund the {amount} for the {product}, it was not as described.",
    ),
    "change_address": (
        "I moved last week, please ship order {order} to {address} instead.",
        "Can you update the delivery address on {order}? New address: {address}",
        "Wrong address on my order {order}! It should go to {address}.",
    ),
    "product_question": (
        "Does the {product} work with {other}?",
        "What is the warranty on the {product}? Thinking of ordering two.",
        "Is the {product} available in {color}?",
        "How big is the {product} exactly? Will it fit in a small flat?",
    ),
    "complaint": (
        "The {product} arrived damaged, the box was completely crushed. Very disappointed.",
        "Your courier left my parcel in the rain and the {product} is ruined!!",
        "This is the third time I am writing about {order}. Nobody answers. Unacceptable.",
        "The {product} looks nothing like the photos on your site. Cheap plastic.",
    ),
    "account_access": (
        "I can't log in, the password reset email never arrives at {email}.",
        "My account was locked after I changed my phone number to {phone}. Please help.",
        "Someone changed the email on my account, I no longer get anything at {email}!",
        "The two-factor code goes to my old number, the new one is {phone}.",
    ),
    "billing_question": (
        "I was charged {amount} twice on {date} for order {order}.",
        "Why does my invoice say {amount} when checkout showed less?",
        "Can I get a VAT invoice for {order}? Company: {company}.",
        "My card was charged {amount} but the order {order} was cancelled.",
    ),
    "talk_to_human": (
        "I want to speak to a real person.",
        "Please have someone call me at {phone}, this is urgent.",
        "agent please",
        "Stop sending me bot answers, I need a human for order {order}.",
    ),
}
_INTENT_NAMES = tuple(_INTENTS)
_OPENERS = (
    "",
    "",
    "",
    "Hi,",
    "Hello,",
    "Hi there!",
    "Good morning,",
    "Dear support team,",
    "hey",
    "Hello {first} here.",
)
_EXTRAS = (
    "I have been a customer for years.",
    "My order number is {order} in case you need it.",
    "I already tried the FAQ and the chat.",
    "You can reach me at {phone} during the day.",
    "Please reply to {email} rather than this address.",
    "I attached a photo.",
    "I need this sorted before {weekday}.",
    "It was meant as a present for my {relative}.",
)
_CLOSERS = (
    "",
    "",
    "Thanks",
    "Thanks, {first}",
    "Best regards,\n{full}",
    "{full}\n{phone}",
    "Sent from my iPhone",
    "Kind regards\n{full}\n{email}",
    "Cheers",
)
_VALUE["relative"] = lambda f, v: f.r.choice(("mother", "son", "wife", "partner", "colleague", "daughter"))


def _customer_text(f: _Fake, intent: str, vals: _Vals, extra: int = 0) -> str:
    """A customer's message about ``intent``: greeting, the issue, maybe a few more sentences, a sign-off."""
    r = f.r
    parts = [r.choice(_OPENERS).format_map(vals), r.choice(_INTENTS[intent]).format_map(vals)]
    parts += [r.choice(_EXTRAS).format_map(vals) for _ in range(extra)]
    text = " ".join(p for p in parts if p)
    closer = r.choice(_CLOSERS).format_map(vals)
    if closer:
        text += ("\n\n" if "\n" in closer else " ") + closer
    return text.lower() if r.random() < 0.08 else text


_INTENT_SYSTEM = (
    "You are the routing layer of Brightwater Home's customer service. Classify the customer's message into "
    "exactly one intent: order_status, cancel_order, refund_request, change_address, product_question, complaint, "
    'account_access, billing_question, talk_to_human. Reply with JSON: {"intent": <intent>, "confidence": <0..1>}.',
    "Classify the following customer support message.\n"
    "Allowed intents:\n- order_status: where is my parcel, delivery dates\n- cancel_order: cancel before shipping\n"
    "- refund_request: money back, returns\n- change_address: new delivery address\n"
    "- product_question: questions before buying\n- complaint: damaged, wrong or bad items, bad service\n"
    "- account_access: login, password, 2FA\n- billing_question: charges, invoices\n"
    "- talk_to_human: asks for a person\n"
    "Return a JSON object with the keys intent, confidence and order_id (null if no order number is mentioned). "
    "Do not add any other text.",
    "ROLE: intent classifier for the help chat.\n"
    'OUTPUT: JSON only, {"intent": "ORDER_STATUS|CANCEL_ORDER|REFUND_REQUEST|CHANGE_ADDRESS|PRODUCT_QUESTION|'
    'COMPLAINT|ACCOUNT_ACCESS|BILLING_QUESTION|TALK_TO_HUMAN", "needs_human": true|false}\n'
    "If unsure pick the closest intent. needs_human is true for complaints and explicit requests for an agent.",
)
_CHAT_OPENING = (
    ("hi", "Hi! How can I help you today?"),
    ("Hello", "Hello, what can I do for you?"),
    ("hey, quick question", "Sure, go ahead!"),
    ("I need help with an order", "Of course. What happened?"),
)


def _intent_routing(f: _Fake, v: int) -> _Call:
    r = f.r
    intent = r.choice(_INTENT_NAMES)
    vals = _Vals(f)
    text = _customer_text(f, intent, vals, extra=r.choice((0, 0, 0, 1)))
    confidence = round(r.uniform(0.55, 0.99), 2)
    answer: dict[str, Any]
    if v == 0:
        answer = {"intent": intent, "confidence": confidence}
    elif v == 1:
        answer = {"intent": intent, "confidence": confidence, "order_id": vals.get("order")}
    else:
        answer = {"intent": intent.upper(), "needs_human": intent in ("complaint", "talk_to_human")}
    before: list[dict[str, Any]] = []
    if r.random() < 0.15:
        said, reply = r.choice(_CHAT_OPENING)
        before = [{"role": "user", "content": said}, {"role": "assistant", "content": reply}]
    return _Call(_INTENT_SYSTEM[v], text, _dumps(answer), json_mode=True, before=before)


_TICKET_TAGS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "order_status": (("shipping", "order-status"), "logistics", "low"),
    "cancel_order": (("order-change", "cancellation"), "orders", "medium"),
    "refund_request": (("returns", "refund"), "billing", "medium"),
    "change_address": (("order-change", "address"), "logistics", "medium"),
    "product_question": (("pre-sales", "product-info"), "sales", "low"),
    "complaint": (("complaint", "damaged-item"), "customer-care", "high"),
    "account_access": (("account", "login"), "it-support", "high"),
    "billing_question": (("billing", "payment"), "billing", "medium"),
    "talk_to_human": (("escalation",), "customer-care", "medium"),
}
_SUBJECTS: dict[str, tuple[str, ...]] = {
    "order_status": (
        "Where is my order?",
        "Order {order}",
        "Delivery status",
        "Re: Your order {order} has shipped",
    ),
    "cancel_order": ("Cancel order", "Cancellation {order}", "Please cancel"),
    "refund_request": ("Refund", "Refund for {order}", "Return / refund question"),
    "change_address": ("Change of address", "Wrong delivery address", "Order {order}: new address"),
    "product_question": ("Question about the {product}", "Product question", "Compatibility"),
    "complaint": ("Very disappointed", "Damaged item", "Complaint about order {order}"),
    "account_access": ("Can't log in", "Account locked", "Password reset not working"),
    "billing_question": ("Double charge", "Invoice question", "Billing {order}"),
    "talk_to_human": ("Call me", "Need to talk to someone", "Escalation"),
}
_PLANS = ("Free", "Plus", "Plus", "Business", "Enterprise")
_TICKET_SYSTEM = (
    "You triage support tickets for the help desk. Assign labels from: shipping, order-status, order-change, "
    "cancellation, returns, refund, address, pre-sales, product-info, complaint, damaged-item, account, login, "
    "billing, payment, escalation, vip. Set priority to low, medium, high or urgent, and route the ticket to one "
    "team: logistics, orders, billing, sales, customer-care, it-support. Answer as JSON with the keys labels, "
    "priority and team.",
    'Ticket triage bot. Read the ticket and output JSON {"labels": [...], "priority": "low|medium|high|urgent", '
    '"team": "..."}. Enterprise customers get the label vip. Use urgent only for security issues or when the '
    "customer says it is urgent.",
    "You are an experienced support team lead. For the ticket below decide the labels (shipping, order-status, "
    "order-change, cancellation, returns, refund, address, pre-sales, product-info, complaint, damaged-item, "
    "account, login, billing, payment, escalation, vip), the priority and the team that should handle it. "
    "Respond with a JSON object (labels, priority, team) and nothing else.",
)


def _ticket_tagging(f: _Fake, v: int) -> _Call:
    r = f.r
    intent = r.choice(_INTENT_NAMES)
    vals = _Vals(f)
    body = _customer_text(f, intent, vals, extra=r.choice((0, 1, 1, 2, 3)))
    plan = r.choice(_PLANS)
    subject = r.choice(_SUBJECTS[intent]).format_map(vals)
    labels, team, priority = _TICKET_TAGS[intent]
    if "urgent" in body.lower() or "!!" in body:
        priority = "urgent"
    elif plan == "Enterprise" and priority == "low":
        priority = "medium"
    if r.random() < 0.3:
        ticket = {
            "id": int(f.fill("#######")),
            "subject": subject,
            "requester": vals["email"],
            "plan": plan,
            "channel": r.choice(("email", "web", "chat")),
            "body": body,
        }
        text = "New ticket:\n" + _dumps(ticket)
    else:
        text = (
            f"Ticket #{f.fill('######')}\nSubject: {subject}\nFrom: {vals['full']} <{vals['email']}>\n"
            f"Plan: {plan} | Customer since {r.randint(2014, 2026)}\n\n{body}"
        )
        if r.random() < 0.25:
            text += (
                f"\n\n> On {vals['date']}, Brightwater Support <support@brightwater-home.com> wrote:\n"
                f"> Hello {vals['first']}, thank you for reaching out. We are looking into this and will get "
                f"back to you within 24 hours.\n> Kind regards, {r.choice(FIRST_NAMES)}"
            )
    answer = {
        "labels": [*labels, "vip"] if plan == "Enterprise" else list(labels),
        "priority": priority,
        "team": team,
    }
    return _Call(_TICKET_SYSTEM[v], text, _dumps(answer), json_mode=True)


# --- reviews ----------------------------------------------------------------------------------------------------

_ASPECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "quality": (
        ("Build quality is excellent, it feels really solid.", "The {product} does exactly what it promises.",
         "Great quality for the price.", "Still works perfectly after {n} months of daily use."),
        ("It broke after {n} weeks.", "Feels cheap and flimsy.", "The {product} stopped working after a month.",
         "Mine arrived with a scratch and a loose part."),
    ),
    "delivery": (
        ("Arrived a day early and well packed.", "Delivery to {city} was quick.", "Shipping was fast and free."),
        ("Took {n} weeks to arrive.", "The box arrived crushed.", "The courier left it outside in the rain."),
    ),
    "price": (
        ("Worth every cent.", "Cheaper than in the shops and just as good.", "Good value for money."),
        ("Way overpriced for what you get.", "Not worth {amount}.", "You can get better for half the price."),
    ),
    "support": (
        ("Customer service answered within an hour and sorted it out.", "The support team was friendly and helpful."),
        ("Customer service never replied to my emails.", "Support kept sending me copy-paste answers."),
    ),
    "design": (
        ("Looks great in our living room.", "Compact and light, easy to carry around.", "Love the {color} colour."),
        ("Much smaller than it looks in the photos.", "The {color} looks very different in real life.",
         "Ugly and bulky."),
    ),
    "ease of use": (
        ("Set up in five minutes, no manual needed.", "Even my {relative} figured it out straight away."),
        ("The app is confusing and keeps logging me out.", "The instructions are useless."),
    ),
}  # fmt: skip
_ASPECT_NAMES = tuple(_ASPECTS)
_TITLES = {
    5: ("Love it!", "Perfect", "Highly recommend", "Great buy"),
    4: ("Very good", "Does the job", "Happy"),
    3: ("OK", "Mixed feelings", "Average"),
    2: ("Disappointed", "Not great"),
    1: ("Avoid", "Terrible", "Waste of money"),
}
_POSITIVE_SHARE = {5: 0.95, 4: 0.8, 3: 0.5, 2: 0.2, 1: 0.05}
_REVIEW_SYSTEM = (
    "Analyse the product review. Return JSON with sentiment (positive, negative, mixed or neutral), rating (the "
    "1-5 stars the review most likely gave) and aspects (an object mapping each aspect mentioned - quality, "
    "delivery, price, support, design, ease of use - to positive or negative).",
    "You rate customer reviews for our marketplace dashboard. Output a JSON object with the keys rating "
    "(integer 1-5) and sentiment (positive/negative/mixed/neutral). No explanations.",
    "Read the review and respond in JSON: sentiment, rating (1 to 5) and reply_needed (true when the customer "
    "had a problem our service team should answer).",
)


def _review_rating(f: _Fake, v: int) -> _Call:
    r = f.r
    rating = r.choices((1, 2, 3, 4, 5), cum_weights=(17, 25, 35, 60, 100))[0]
    vals = _Vals(f)
    aspects: dict[str, str] = {}
    sentences = []
    for aspect in r.sample(_ASPECT_NAMES, r.choice((1, 1, 2, 2, 3, 4))):
        good = r.random() < _POSITIVE_SHARE[rating]
        aspects[aspect] = "positive" if good else "negative"
        sentences.append(r.choice(_ASPECTS[aspect][0 if good else 1]).format_map(vals))
    polar = set(aspects.values())
    sentiment = (
        "positive" if rating >= 4 else "negative" if rating <= 2 else "mixed" if len(polar) > 1 else "neutral"
    )
    body = " ".join(sentences)
    style = r.randrange(4)
    if style == 0:
        text = f"{r.choice(_TITLES[rating])}\n{body}"
    elif style == 1:
        text = f"Product: {vals['product']}\nReview by {vals['first']} {vals['last'][0]}. ({vals['city']}):\n{body}"
    elif style == 2:
        text = f'Review: "{body}"'
    else:
        text = f"{r.choice(_TITLES[rating])} - {body} (Verified purchase)"
    answer: dict[str, Any]
    if v == 0:
        answer = {"sentiment": sentiment, "rating": rating, "aspects": aspects}
    elif v == 1:
        answer = {"rating": rating, "sentiment": sentiment}
    else:
        answer = {"sentiment": sentiment, "rating": rating, "reply_needed": "negative" in polar}
    return _Call(_REVIEW_SYSTEM[v], text, _dumps(answer), json_mode=True)


# --- translation ------------------------------------------------------------------------------------------------

_LANGS = ("en", "de", "fr", "es", "it", "nl", "pt")
_PARALLEL: tuple[tuple[str, ...], ...] = (  # en, de, fr, es, it, nl, pt
    ("Hello, my name is {full} and I have a question about my order {order}.",
     "Hallo, mein Name ist {full} und ich habe eine Frage zu meiner Bestellung {order}.",
     "Bonjour, je m'appelle {full} et j'ai une question concernant ma commande {order}.",
     "Hola, me llamo {full} y tengo una pregunta sobre mi pedido {order}.",
     "Buongiorno, mi chiamo {full} e ho una domanda sul mio ordine {order}.",
     "Hallo, mijn naam is {full} en ik heb een vraag over mijn bestelling {order}.",
     "Olá, o meu nome é {full} e tenho uma dúvida sobre a minha encomenda {order}."),
    ("The package arrived yesterday but {n} items are missing.",
     "Das Paket ist gestern angekommen, aber {n} Artikel fehlen.",
     "Le colis est arrivé hier mais il manque {n} articles.",
     "El paquete llegó ayer pero faltan {n} artículos.",
     "Il pacco è arrivato ieri ma mancano {n} articoli.",
     "Het pakket is gisteren aangekomen, maar er ontbreken {n} artikelen.",
     "A encomenda chegou ontem, mas faltam {n} artigos."),
    ("Could you please call me back at {phone}?",
     "Könnten Sie mich bitte unter {phone} zurückrufen?",
     "Pourriez-vous me rappeler au {phone}, s'il vous plaît ?",
     "¿Podrían llamarme al {phone}, por favor?",
     "Potreste richiamarmi al numero {phone}, per favore?",
     "Kunt u mij alstublieft terugbellen op {phone}?",
     "Podem ligar-me de volta para o {phone}, por favor?"),
    ("I would like to change the delivery date to {date}.",
     "Ich möchte den Liefertermin auf den {date} verschieben.",
     "Je voudrais changer la date de livraison au {date}.",
     "Quisiera cambiar la fecha de entrega al {date}.",
     "Vorrei cambiare la data di consegna al {date}.",
     "Ik wil graag de leverdatum wijzigen naar {date}.",
     "Gostaria de alterar a data de entrega para {date}."),
    ("The invoice shows {amount}, but the price on the website was lower.",
     "Auf der Rechnung stehen {amount}, aber der Preis auf der Website war niedriger.",
     "La facture indique {amount}, mais le prix sur le site était plus bas.",
     "La factura muestra {amount}, pero el precio en la web era más bajo.",
     "La fattura riporta {amount}, ma il prezzo sul sito era più basso.",
     "Op de factuur staat {amount}, maar de prijs op de website was lager.",
     "A fatura mostra {amount}, mas o preço no site era mais baixo."),
    ("Thank you very much for your quick help!",
     "Vielen Dank für Ihre schnelle Hilfe!",
     "Merci beaucoup pour votre aide rapide !",
     "¡Muchas gracias por su rápida ayuda!",
     "Grazie mille per il vostro aiuto rapido!",
     "Hartelijk dank voor uw snelle hulp!",
     "Muito obrigado pela vossa ajuda rápida!"),
    ("Our meeting has been moved to {time} on {date}; please let {first2} know.",
     "Unser Treffen wurde auf {time} Uhr am {date} verschoben; bitte geben Sie {first2} Bescheid.",
     "Notre réunion a été déplacée à {time} le {date} ; merci de prévenir {first2}.",
     "Nuestra reunión se ha movido a las {time} del {date}; por favor avise a {first2}.",
     "La nostra riunione è stata spostata alle {time} del {date}; per favore avvisate {first2}.",
     "Onze vergadering is verplaatst naar {time} op {date}; laat u het {first2} weten?",
     "A nossa reunião passou para as {time} do dia {date}; por favor avise {first2}."),
    ("You can reach me by email at {email}.",
     "Sie erreichen mich per E-Mail unter {email}.",
     "Vous pouvez me joindre par e-mail à {email}.",
     "Puede contactarme por correo electrónico en {email}.",
     "Potete contattarmi via e-mail all'indirizzo {email}.",
     "U kunt mij per e-mail bereiken op {email}.",
     "Pode contactar-me por e-mail através de {email}."),
    ("The device stopped working after {days} days and I would like a replacement.",
     "Das Gerät funktioniert nach {days} Tagen nicht mehr und ich hätte gerne einen Ersatz.",
     "L'appareil a cessé de fonctionner après {days} jours et je souhaiterais un remplacement.",
     "El aparato dejó de funcionar después de {days} días y quisiera un reemplazo.",
     "Il dispositivo ha smesso di funzionare dopo {days} giorni e vorrei una sostituzione.",
     "Het apparaat werkt na {days} dagen niet meer en ik wil graag een vervanging.",
     "O aparelho deixou de funcionar ao fim de {days} dias e gostaria de uma substituição."),
    ("Is it possible to pick up the order in {city}?",
     "Ist es möglich, die Bestellung in {city} abzuholen?",
     "Est-il possible de retirer la commande à {city} ?",
     "¿Es posible recoger el pedido en {city}?",
     "È possibile ritirare l'ordine a {city}?",
     "Is het mogelijk de bestelling in {city} op te halen?",
     "É possível levantar a encomenda em {city}?"),
    ("Please send the documents before the end of the week.",
     "Bitte schicken Sie die Unterlagen vor Ende der Woche.",
     "Merci d'envoyer les documents avant la fin de la semaine.",
     "Por favor, envíe los documentos antes del final de la semana.",
     "Per favore inviate i documenti entro la fine della settimana.",
     "Stuur de documenten alstublieft voor het einde van de week.",
     "Por favor, envie os documentos antes do fim da semana."),
    ("We are very satisfied with the product and will order again.",
     "Wir sind mit dem Produkt sehr zufrieden und werden wieder bestellen.",
     "Nous sommes très satisfaits du produit et nous commanderons à nouveau.",
     "Estamos muy satisfechos con el producto y volveremos a pedir.",
     "Siamo molto soddisfatti del prodotto e ordineremo di nuovo.",
     "We zijn erg tevreden over het product en zullen opnieuw bestellen.",
     "Estamos muito satisfeitos com o produto e voltaremos a encomendar."),
)  # fmt: skip
_TRANSLATE_SYSTEM = (
    "Detect the language of the customer's message and translate it into English. Respond with JSON: "
    '{"language": <ISO 639-1 code>, "translation": <English text>}.',
    "You are the translation service of the support inbox. Identify the source language and give a faithful "
    "English translation. Output JSON with the keys language and translation. Keep names, numbers, email "
    "addresses and order IDs unchanged.",
    'Translate to English. JSON only: {"language": "xx", "translation": "..."}',
)


def _translation(f: _Fake, v: int) -> _Call:
    r = f.r
    lang = r.choices(range(len(_LANGS)), cum_weights=(5, 35, 55, 70, 80, 92, 100))[0]
    vals = _Vals(f)
    rows = r.sample(_PARALLEL, r.choice((1, 2, 2, 3, 4)))
    source = " ".join(row[lang] for row in rows).format_map(vals)
    english = " ".join(row[0] for row in rows).format_map(vals)
    user = r.choice(("{m}", "{m}", "Message:\n{m}", "Translate: {m}", 'Customer wrote: "{m}"')).format(
        m=source
    )
    answer = {"language": _LANGS[lang], "translation": english}
    return _Call(_TRANSLATE_SYSTEM[v], user, _dumps(answer), json_mode=True)


# --- invoices ---------------------------------------------------------------------------------------------------


class _Locale(NamedTuple):
    cities: tuple[str, ...]
    currency: str
    comma: bool  # 1.234,50
    date_style: int
    vat: int
    words: tuple[str, ...]  # title, number, date, due, subtotal, tax, total, vat id, pay line
    iban: bool


_LOCALES = (
    _Locale(("Berlin", "Munich", "Hamburg"), "EUR", True, 1, 19,
            ("RECHNUNG", "Rechnungsnummer", "Rechnungsdatum", "Fällig am", "Zwischensumme", "USt. 19 %",
             "Gesamtbetrag", "USt-IdNr.", "Bitte überweisen Sie den Betrag unter Angabe der Rechnungsnummer auf"),
            True),
    _Locale(("London", "Manchester"), "GBP", False, 2, 20,
            ("INVOICE", "Invoice no.", "Invoice date", "Due date", "Subtotal", "VAT 20%", "Total due", "VAT reg.",
             "Please pay by bank transfer to"), True),
    _Locale(("New York", "Austin", "Seattle"), "USD", False, 3, 8,
            ("Invoice", "Invoice #", "Date", "Due", "Subtotal", "Sales tax 8%", "Amount due", "EIN",
             "Remit by ACH to"), False),
    _Locale(("Paris", "Lyon"), "EUR", True, 2, 20,
            ("FACTURE", "N° de facture", "Date de facture", "Échéance", "Total HT", "TVA 20 %", "Total TTC",
             "N° TVA", "Règlement par virement sur"), True),
    _Locale(("Amsterdam", "Rotterdam"), "EUR", True, 0, 21,
            ("FACTUUR", "Factuurnummer", "Factuurdatum", "Vervaldatum", "Subtotaal", "BTW 21%", "Totaal",
             "BTW-nummer", "Gelieve te betalen op"), True),
)  # fmt: skip
_CITY_BY_NAME = {c.name: c for c in CITIES}
_LINE_ITEMS = (
    "Consulting hours", "Cloud hosting ({month})", "Software licence, annual", "Support retainer ({month})",
    "Website maintenance", "Workshop facilitation", "Travel expenses", "Freight and handling", "Printer toner",
    "Office chairs", "Translation services", "Data migration", "On-site installation", "Training session",
    "Security audit", "Catering", "Laptop stand", "Monitor 27 inch", "Cleaning services ({month})",
)  # fmt: skip
_INVOICE_SYSTEM = (
    "Extract the following fields from the invoice and return them as JSON: vendor, invoice_number, "
    "invoice_date (YYYY-MM-DD), due_date (YYYY-MM-DD), total (number), currency (ISO 4217), iban (no spaces, "
    "null if missing), vat_id.",
    "You are an accounts-payable assistant. The user pastes the text of a supplier invoice, often OCR output. "
    "Return only a JSON object with vendor, invoice_number, invoice_date, due_date, total, currency and iban. "
    "Dates in ISO format, amounts as numbers without thousands separators, null for anything that is not on "
    "the invoice.",
    "Parse the invoice into JSON. Schema: {vendor: string, invoice_number: string, invoice_date: date, "
    "due_date: date|null, currency: string, total: number, iban: string|null, line_items: [{description, "
    "quantity, unit_price}]}",
)


def _invoice_items(f: _Fake, month: str) -> list[tuple[str, int, float]]:
    r = f.r
    count = r.choice((1, 1, 2, 2, 3, 3, 4, 5, 6, 8)) if r.random() < 0.85 else r.randint(10, 28)
    items = []
    for _ in range(count):
        if r.random() < 0.35:
            name, low, high = r.choice(PRODUCTS)
            description = name.capitalize()
        else:
            description, low, high = r.choice(_LINE_ITEMS).format(month=month), 20, 1800
        items.append(
            (description, r.choice((1, 1, 1, 2, 3, 5, 8, 10, 12, 20)), round(r.uniform(low, high), 2))
        )
    return items


def _invoice(f: _Fake, v: int) -> _Call:
    r = f.r
    loc = r.choice(_LOCALES)
    city = _CITY_BY_NAME[r.choice(loc.cities)]
    vendor, domain = f.company()
    _, _, _, _, vendor_address = f.address(city)
    buyer, _ = f.company()
    contact = f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"
    issued = f.day()
    due = issued + timedelta(days=r.choice((14, 14, 30, 30, 45, 60)))
    number = f.fill(r.choice(("INV-####-####", "RE-####/###", "F######", "2026-#####", "#####")))
    items = _invoice_items(f, _MONTHS[issued.month - 1])
    subtotal = round(sum(q * p for _, q, p in items), 2)
    tax = round(subtotal * loc.vat / 100, 2)
    total = round(subtotal + tax, 2)
    iban = f.iban(city.cc) if loc.iban else None
    vat_id = f.fill(f"{city.cc}#########") if city.cc != "US" else f.fill("##-#######")
    w = loc.words
    lines = [
        vendor,
        vendor_address,
        f"Tel. {f.phone(city)} · accounts@{domain}",
        f"{w[7]}: {vat_id}",
        "",
        w[0],
        f"{w[1]}: {number}",
        f"{w[2]}: {_date_text(issued, loc.date_style)}",
        f"{w[3]}: {_date_text(due, loc.date_style)}",
        "",
        f"Bill to: {buyer}, attn. {contact}",
        f"{f.address()[4]}",
        "",
    ]
    for pos, (description, qty, price) in enumerate(items, start=1):
        amount = _money(qty * price, loc.comma)
        lines.append(f"{pos:<3} {description:<32} {qty:>3} x {_money(price, loc.comma):>10} {amount:>12}")
    lines += [
        "",
        f"{w[4]}: {_money(subtotal, loc.comma)}",
        f"{w[5]}: {_money(tax, loc.comma)}",
        f"{w[6]}: {_money(total, loc.comma)} {loc.currency}",
        "",
    ]
    if iban:
        lines.append(f"{w[8]} IBAN {_grouped(iban)}, BIC {f.fill('@@@@' + city.cc + '@@')}")
    else:
        lines.append(f"{w[8]} routing {f.fill('#########')}, account {f.fill('##########')}")
    text = "\n".join(lines)
    if r.random() < 0.1:  # OCR noise
        text = text.replace("0", "O", 1).replace("l", "1", 2)
    user = r.choice(("{t}", "{t}", "Invoice text:\n\n{t}", "OCR result of scan_{n}.pdf:\n{t}")).format(
        t=text, n=f.fill("####")
    )
    answer: dict[str, Any] = {
        "vendor": vendor,
        "invoice_number": number,
        "invoice_date": _iso(issued),
        "due_date": _iso(due),
        "total": total,
        "currency": loc.currency,
        "iban": iban,
    }
    if v == 0:
        answer["vat_id"] = vat_id
    elif v == 2:
        answer["line_items"] = [{"description": d, "quantity": q, "unit_price": p} for d, q, p in items]
    return _Call(_INVOICE_SYSTEM[v], user, _dumps(answer), json_mode=True)


# --- contacts from emails ---------------------------------------------------------------------------------------

_MAIL_SUBJECTS = (
    "Following up",
    "Our call on {weekday}",
    "Quote for {project}",
    "Introduction",
    "Re: proposal",
    "Partnership",
    "Next steps",
    "Price list {year}",
)
_MAIL_BODY = (
    "Great meeting you at the {event} last week.",
    "As discussed, I'm attaching our price list and the references.",
    "Let me know if {weekday} works for a quick call.",
    "We would love to show you what we did for {company}.",
    "Our team can start as early as {date}.",
    "I'm taking over the account from my colleague, who has moved to another role.",
    "Please find the signed NDA attached.",
    "We are moving our office to {address} next month.",
)
_VALUE["event"] = lambda f, v: f.r.choice(
    (
        "trade fair in Cologne",
        "SaaS summit",
        "Web Summit",
        "partner dinner",
        "logistics expo",
        "meetup in " + f.r.choice(CITIES).name,
    )
)
_VALUE["year"] = lambda f, v: str(f.r.choice((2026, 2026, 2027)))
_CONTACT_SYSTEM = (
    "Extract every person's contact details from the email. Return JSON "
    '{"contacts": [{"name", "email", "phone", "company", "title"}]}; use null for missing values. Phone numbers '
    "in E.164 format.",
    "You help our CRM team. From the email below, pull out the sender's and any other mentioned person's contact "
    "data (name, email, phone, company, title) as JSON under the key contacts.",
    "Read the email and output JSON with a 'contacts' list for the address book. Fields: name, email, phone, "
    "company, title. Never invent data.",
)


def _e164(phone: str) -> str:
    return "".join(c for c in phone if c.isdigit() or c == "+")


def _contact_extraction(f: _Fake, v: int) -> _Call:
    r = f.r
    company, domain = f.company()
    city = r.choice(CITIES)
    first, last = r.choice(FIRST_NAMES), r.choice(LAST_NAMES)
    email, phone, title = f.email(first, last, domain), f.phone(city), r.choice(_JOB_TITLES)
    mobile = f.phone(city) if r.random() < 0.4 else None
    me = _Vals(f)
    vals = _Vals(f)
    body = [r.choice(_MAIL_BODY).format_map(vals) for _ in range(r.randint(1, 4))]
    contacts: list[dict[str, str | None]] = [
        {"name": f"{first} {last}", "email": email, "phone": _e164(phone), "company": company, "title": title}
    ]
    if r.random() < 0.3:
        other = _Vals(f)
        other_email = f.email(other["first"], other["last"], domain)
        body.insert(
            1, f"Please also loop in {other['full']} ({other_email}), who handles procurement on our side."
        )
        contacts.append(
            {"name": other["full"], "email": other_email, "phone": None, "company": company, "title": None}
        )
    signature = [
        f"{first} {last}",
        f"{title} | {company}" if r.random() < 0.5 else f"{title}\n{company}",
        f"{r.choice(('T', 'Tel', 'Phone', 'Office'))}: {phone}",
    ]
    if mobile:
        signature.append(f"M: {mobile}")
    if r.random() < 0.6:
        signature.append(email)
    signature.append(f"www.{domain}")
    text = (
        f"From: {first} {last} <{email}>\nTo: {me['email']}\n"
        f"Subject: {r.choice(_MAIL_SUBJECTS).format_map(vals)}\n\n"
        f"{r.choice(('Hi', 'Hello', 'Dear', 'Good morning'))} {me['first']},\n\n"
        + " ".join(body)
        + f"\n\n{r.choice(('Best', 'Kind regards', 'Cheers', 'Best wishes'))},\n"
        + "\n".join(signature)
    )
    if r.random() < 0.2:
        text = (
            f"---------- Forwarded message ---------\n{text}\n\n"
            f"{me['first']} wrote:\n> Thanks for the quick reply, talk soon."
        )
    return _Call(_CONTACT_SYSTEM[v], text, _dumps({"contacts": contacts}), json_mode=True)


# --- addresses --------------------------------------------------------------------------------------------------

_ABBREVIATIONS = (
    ("straße", "str."),
    ("Straße", "Str."),
    ("strasse", "str."),
    (" Street", " St"),
    (" Avenue", " Ave"),
    ("Boulevard", "Blvd"),
    ("boulevard", "bd"),
    ("Calle ", "C/ "),
    ("Via ", "V. "),
    (" Road", " Rd"),
    ("Avenida", "Av."),
    ("Rua ", "R. "),
)
_ADDRESS_SYSTEM = (
    "Normalise the postal address. Return JSON with street, house_number, postcode, city and country "
    "(ISO 3166-1 alpha-2). Expand abbreviations, fix capitalisation, ignore names and phone numbers.",
    "You are the address cleaning service for our shipping labels. Input: one free-text address as a customer "
    "typed it. Output: JSON {street, house_number, postcode, city, country}; country is a two-letter code.",
)


def _address_normalisation(f: _Fake, v: int) -> _Call:
    r = f.r
    city, street, number, postcode, line = f.address()
    messy = line
    for long, short in _ABBREVIATIONS:
        if long in messy and r.random() < 0.6:
            messy = messy.replace(long, short)
    if r.random() < 0.5:
        messy = messy.replace(",", "" if r.random() < 0.5 else " ,")
    if r.random() < 0.4:
        messy += r.choice((" ", ", ", " - ")) + r.choice((city.country, city.cc, city.country.upper()))
    case = r.random()
    messy = messy.lower() if case < 0.35 else messy.upper() if case < 0.45 else messy
    if r.random() < 0.4:
        vals = _Vals(f)
        messy = r.choice(
            ("{full}, {a}, tel {phone}", "Ship to: {full} / {a}", "{a} (c/o {full})", "{full}\n{a}\n{phone}")
        ).format_map(_Vals(f, a=messy, full=vals["full"]))
    user = r.choice(("{a}", "{a}", "Address: {a}", "Normalise: {a}")).format(a=messy)
    answer = {
        "street": street,
        "house_number": number,
        "postcode": postcode,
        "city": city.name,
        "country": city.cc,
    }
    return _Call(_ADDRESS_SYSTEM[v], user, _dumps(answer), json_mode=True)


# --- SQL for one schema -----------------------------------------------------------------------------------------

_SCHEMA_DDL = """CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT, email TEXT, city TEXT, country CHAR(2),
  created_at TIMESTAMPTZ);
CREATE TABLE products (id BIGINT PRIMARY KEY, name TEXT, category TEXT, price NUMERIC(10,2));
CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT REFERENCES customers(id), status TEXT,
  created_at TIMESTAMPTZ, total NUMERIC(12,2));
CREATE TABLE order_items (order_id BIGINT REFERENCES orders(id), product_id BIGINT REFERENCES products(id),
  quantity INT, unit_price NUMERIC(10,2));"""
_SCHEMA_SHORT = """Tables:
- customers(id, name, email, city, country, created_at)
- products(id, name, category, price)
- orders(id, customer_id -> customers.id, status, created_at, total)
- order_items(order_id -> orders.id, product_id -> products.id, quantity, unit_price)"""
_SQL_SYSTEM = (
    f"{_SCHEMA_DDL}\n\nWrite a single PostgreSQL query that answers the user's question. Return only the SQL, "
    "no explanation.",
    f"You translate questions about our shop database into SQL.\n{_SCHEMA_SHORT}\nAnswer with the query in a "
    "```sql block.",
    f"You are a data analyst assistant for the sales database (PostgreSQL 15).\n{_SCHEMA_SHORT}\nRules: only "
    "SELECT statements; qualify columns when you join; add LIMIT 100 to queries that return rows unless the "
    "question asks for a number. Output the SQL only.",
)
_CATEGORIES = ("electronics", "furniture", "kitchen", "sports", "outdoor", "home", "office")
_STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "refunded")
# (phrasings, SQL, returns rows)
_SQL: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("How many orders were placed in {month} {year}?", "number of orders in {month} {year}",
      "Count the orders from {month} {year}."),
     "SELECT COUNT(*) FROM orders WHERE created_at >= '{start}' AND created_at < '{end}';", False),
    (("List the top {k} customers by total spend.", "Who are our {k} biggest customers by revenue?",
      "top {k} customers by spend"),
     "SELECT c.id, c.name, SUM(o.total) AS total_spend FROM customers c JOIN orders o ON o.customer_id = c.id "
     "GROUP BY c.id, c.name ORDER BY total_spend DESC LIMIT {k};", False),
    (("Which products in the {category} category cost more than {price}?",
      "{category} products over {price} please"),
     "SELECT name, price FROM products WHERE category = '{category}' AND price > {price} ORDER BY price DESC",
     True),
    (("How many customers do we have in {city}?", "customer count {city}", "Number of customers based in {city}?"),
     "SELECT COUNT(*) FROM customers WHERE city = '{city}';", False),
    (("What was the average order value in {year}?", "AOV for {year}", "Average order total in {year}?"),
     "SELECT AVG(total) AS avg_order_value FROM orders WHERE created_at >= '{year}-01-01' "
     "AND created_at < '{next_year}-01-01';", False),
    (("Show all orders of the customer with email {email}.", "orders for {email}",
      "What has {email} ordered so far?"),
     "SELECT o.id, o.status, o.created_at, o.total FROM orders o JOIN customers c ON c.id = o.customer_id "
     "WHERE c.email = '{email}' ORDER BY o.created_at DESC", True),
    (("Which {k} products sold the most units last month?", "best sellers last month, top {k} by units"),
     "SELECT p.name, SUM(oi.quantity) AS units FROM order_items oi JOIN products p ON p.id = oi.product_id "
     "JOIN orders o ON o.id = oi.order_id WHERE o.created_at >= date_trunc('month', now()) - interval '1 month' "
     "AND o.created_at < date_trunc('month', now()) GROUP BY p.name ORDER BY units DESC LIMIT {k};", False),
    (("How many orders are still {status}?", "count of {status} orders", "Number of orders with status {status}"),
     "SELECT COUNT(*) FROM orders WHERE status = '{status}';", False),
    (("Total revenue per country in {year}?", "revenue by country {year}", "Break down {year} sales by country."),
     "SELECT c.country, SUM(o.total) AS revenue FROM orders o JOIN customers c ON c.id = o.customer_id "
     "WHERE o.created_at >= '{year}-01-01' AND o.created_at < '{next_year}-01-01' GROUP BY c.country "
     "ORDER BY revenue DESC;", False),
    (("Which customers signed up since {iso} but never ordered?", "customers without orders who joined after {iso}"),
     "SELECT c.id, c.name, c.email FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
     "WHERE c.created_at >= '{iso}' AND o.id IS NULL", True),
    (("What is the price of the {product}?", "price of {product}"),
     "SELECT price FROM products WHERE name ILIKE '%{product}%';", False),
    (("How many orders do we have per status?", "orders by status", "Order count for each status?"),
     "SELECT status, COUNT(*) AS orders FROM orders GROUP BY status ORDER BY orders DESC;", False),
    (("Show the orders over {price} from customers in {city} placed in {year}.",
      "big orders (> {price}) from {city} in {year}"),
     "SELECT o.id, c.name, o.total, o.created_at FROM orders o JOIN customers c ON c.id = o.customer_id "
     "WHERE c.city = '{city}' AND o.total > {price} AND o.created_at >= '{year}-01-01' "
     "AND o.created_at < '{next_year}-01-01' ORDER BY o.total DESC", True),
)  # fmt: skip


def _sql_generation(f: _Fake, v: int) -> _Call:
    r = f.r
    phrasings, sql, rows = r.choice(_SQL)
    year = r.choice((2024, 2025, 2025, 2026))
    month = r.randint(1, 12)
    vals = _Vals(
        f,
        year=str(year),
        next_year=str(year + 1),
        month=_MONTHS[month - 1],
        start=f"{year}-{month:02d}-01",
        end=f"{year + month // 12}-{month % 12 + 1:02d}-01",
        category=r.choice(_CATEGORIES),
        price=str(r.choice((50, 100, 250, 500, 1000))),
        status=r.choice(_STATUSES),
        iso=_iso(f.day()),
    )
    question = r.choice(phrasings).format_map(vals)
    query = sql.format_map(vals)
    if rows:
        query += " LIMIT 100;" if v == 2 else ";"
    user = r.choice(("{q}", "{q}", "Question: {q}", "Write SQL for: {q}", "{q} Thanks!")).format(q=question)
    content = f"```sql\n{query}\n```" if v == 1 else query
    return _Call(_SQL_SYSTEM[v], user, content)


# --- unit tests for short Python functions ----------------------------------------------------------------------

# (names, source, tests); {fn} is the function's name
_FUNCTIONS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("clamp", "bound", "limit_value"),
     'def {fn}(value: float, low: float, high: float) -> float:\n    """Value limited to [low, high]."""\n'
     '    if low > high:\n        raise ValueError("low > high")\n    return max(low, min(value, high))',
     "@pytest.mark.parametrize(\n    (\"value\", \"expected\"), [(5, 5), (-1, 0), (11, 10), (0, 0), (10, 10)]\n)\n"
     "def test_{fn}_limits_the_value(value: float, expected: float) -> None:\n"
     "    assert {fn}(value, 0, 10) == expected\n\n\ndef test_{fn}_rejects_an_empty_range() -> None:\n"
     "    with pytest.raises(ValueError):\n        {fn}(1, 5, 2)"),
    (("slugify", "make_slug", "to_slug"),
     "def {fn}(text: str) -> str:\n    text = text.strip().lower()\n"
     '    text = re.sub(r"[^a-z0-9]+", "-", text)\n    return text.strip("-")',
     "def test_{fn}_lowercases_and_joins_words() -> None:\n    assert {fn}(\"Hello World\") == \"hello-world\"\n\n\n"
     "def test_{fn}_drops_punctuation() -> None:\n    assert {fn}(\"  Crème brûlée, please! \") == \"cr-me-br-l-e-please\"\n\n\n"
     "def test_{fn}_of_only_symbols_is_empty() -> None:\n    assert {fn}(\"!!!\") == \"\""),
    (("parse_price", "price_from_text", "to_amount"),
     "def {fn}(text: str) -> float:\n    digits = text.replace(\"€\", \"\").replace(\"$\", \"\").strip()\n"
     "    if \",\" in digits and digits.rfind(\",\") > digits.rfind(\".\"):\n"
     "        digits = digits.replace(\".\", \"\").replace(\",\", \".\")\n    else:\n"
     "        digits = digits.replace(\",\", \"\")\n    return float(digits)",
     "@pytest.mark.parametrize(\n    (\"text\", \"expected\"),\n"
     "    [(\"€1.234,50\", 1234.5), (\"$1,234.50\", 1234.5), (\"12\", 12.0), (\" 0,99 \", 0.99)],\n)\n"
     "def test_{fn}_reads_both_separators(text: str, expected: float) -> None:\n"
     "    assert {fn}(text) == pytest.approx(expected)\n\n\ndef test_{fn}_rejects_words() -> None:\n"
     "    with pytest.raises(ValueError):\n        {fn}(\"free\")"),
    (("chunk", "batched", "split_every"),
     "def {fn}(items: list[T], size: int) -> list[list[T]]:\n    if size < 1:\n"
     "        raise ValueError(\"size must be positive\")\n"
     "    return [items[i : i + size] for i in range(0, len(items), size)]",
     "def test_{fn}_splits_evenly() -> None:\n    assert {fn}([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]\n\n\n"
     "def test_{fn}_keeps_the_remainder() -> None:\n    assert {fn}([1, 2, 3], 2) == [[1, 2], [3]]\n\n\n"
     "def test_{fn}_of_nothing_is_empty() -> None:\n    assert {fn}([], 3) == []\n\n\n"
     "def test_{fn}_needs_a_positive_size() -> None:\n    with pytest.raises(ValueError):\n        {fn}([1], 0)"),
    (("median", "middle_value"),
     "def {fn}(values: list[float]) -> float:\n    ordered = sorted(values)\n    n = len(ordered)\n"
     "    if n == 0:\n        raise ValueError(\"no values\")\n    mid = n // 2\n"
     "    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2",
     "def test_{fn}_of_an_odd_count() -> None:\n    assert {fn}([3, 1, 2]) == 2\n\n\n"
     "def test_{fn}_of_an_even_count_averages() -> None:\n    assert {fn}([4, 1, 3, 2]) == 2.5\n\n\n"
     "def test_{fn}_of_nothing_raises() -> None:\n    with pytest.raises(ValueError):\n        {fn}([])"),
    (("merge_settings", "deep_merge", "apply_overrides"),
     "def {fn}(defaults: dict, overrides: dict) -> dict:\n    merged = dict(defaults)\n"
     "    for key, value in overrides.items():\n"
     "        if isinstance(value, dict) and isinstance(merged.get(key), dict):\n"
     "            merged[key] = {fn}(merged[key], value)\n        else:\n            merged[key] = value\n"
     "    return merged",
     "def test_{fn}_overrides_top_level_keys() -> None:\n    assert {fn}({\"a\": 1}, {\"a\": 2}) == {\"a\": 2}\n\n\n"
     "def test_{fn}_merges_nested_dicts() -> None:\n"
     "    assert {fn}({\"db\": {\"host\": \"x\", \"port\": 1}}, {\"db\": {\"port\": 2}}) == {\"db\": {\"host\": \"x\", \"port\": 2}}\n\n\n"
     "def test_{fn}_does_not_change_the_defaults() -> None:\n    defaults = {\"a\": {\"b\": 1}}\n"
     "    {fn}(defaults, {\"a\": {\"b\": 2}})\n    assert defaults == {\"a\": {\"b\": 1}}"),
    (("normalize_phone", "clean_phone_number"),
     "def {fn}(number: str, country_code: str = \"+49\") -> str:\n"
     "    digits = re.sub(r\"[^0-9+]\", \"\", number)\n    if digits.startswith(\"00\"):\n"
     "        return \"+\" + digits[2:]\n    if digits.startswith(\"0\"):\n"
     "        return country_code + digits[1:]\n    return digits",
     "@pytest.mark.parametrize(\n    (\"raw\", \"expected\"),\n"
     "    [(\"030 1234567\", \"+49301234567\"), (\"0044 20 7946 0018\", \"+442079460018\"), (\"+33 1 23 45 67 89\", \"+33123456789\")],\n)\n"
     "def test_{fn}_gives_e164(raw: str, expected: str) -> None:\n    assert {fn}(raw) == expected\n\n\n"
     "def test_{fn}_uses_the_given_country_code() -> None:\n    assert {fn}(\"06 1234\", \"+31\") == \"+3161234\""),
)  # fmt: skip
_MODULES = ("utils", "helpers", "pricing", "text_tools", "core.util", "app.common", "lib.misc", "shop.format")
_TEST_SYSTEM = (
    "You are a senior Python developer. Write pytest unit tests for the function the user gives you. Cover the "
    "edge cases. Return only code.",
    "Generate a pytest test module for the following function. Use parametrize where it helps. Import the "
    "function from the module named in the request.",
    "Write unit tests (pytest) for this code. Reply with one short sentence and then the code block.",
)


def _unit_tests(f: _Fake, v: int) -> _Call:
    r = f.r
    names, source, tests = r.choice(_FUNCTIONS)
    fn = r.choice(names)
    module = r.choice(_MODULES)
    code = source.replace("{fn}", fn)
    if r.random() < 0.3:
        code = f"# {r.choice(('TODO: handle None', 'used by the checkout', 'hot path', 'legacy, keep API'))}\n{code}"
    user = r.choice(
        (
            "Module: {m}.py\n\n```python\n{c}\n```",
            "Write tests for {fn} in {m}:\n{c}",
            "```python\n# {m}.py\n{c}\n```\nPlease add tests.",
            "Can you write pytest tests for this function from {m}?\n\n{c}",
        )
    ).format(m=module, c=code, fn=fn)
    module_code = f"import pytest\n\nfrom {module} import {fn}\n\n\n{tests.replace('{fn}', fn)}\n"
    if v == 0:
        content = module_code
    elif v == 1:
        content = f"```python\n{module_code}```"
    else:
        content = f"Here are tests for `{fn}` covering the normal cases and the edge cases:\n\n```python\n{module_code}```"
    return _Call(_TEST_SYSTEM[v], user, content)


# --- product copy -----------------------------------------------------------------------------------------------

_PRODUCT_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("backpack", ("a water-resistant recycled-nylon shell", "a padded 16-inch laptop sleeve", "a hidden passport pocket",
                  "{n}0 litres of storage", "a lifetime warranty on the zips", "breathable mesh straps")),
    ("desk lamp", ("{n} brightness levels", "warm-to-cool colour temperature", "a USB-C charging port in the base",
                   "a flicker-free LED", "a brushed aluminium arm", "a memory function")),
    ("running shoe", ("a responsive foam midsole", "a knitted upper", "reflective details for dark mornings",
                      "a {n} mm heel drop", "a grippy rubber outsole", "only 2{n}0 grams per shoe")),
    ("coffee grinder", ("{n}0 grind settings", "conical steel burrs", "a quiet motor", "an anti-static container",
                        "a timer for single and double shots")),
    ("wireless earbuds", ("active noise cancelling", "{n}0 hours of battery with the case", "IPX4 splash resistance",
                          "multipoint Bluetooth", "touch controls", "a wireless charging case")),
    ("throw blanket", ("100% organic cotton", "a chunky knit", "machine washable at 40 degrees", "{n} colours",
                       "a generous 130 x 170 cm size")),
    ("smart thermostat", ("a learning schedule", "app and voice control", "energy reports every month",
                          "geofencing", "a five-minute installation")),
    ("water bottle", ("double-wall insulation", "cold for {n}4 hours", "a leak-proof lid", "BPA-free materials",
                      "a powder-coated finish")),
)  # fmt: skip
_BRANDS = (
    "Nordvik",
    "Alba",
    "Kairo",
    "Lumo",
    "Tessa",
    "Orbit",
    "Fjell",
    "Mira",
    "Solace",
    "Vento",
    "Brightwater",
)
_TONES = ("playful", "premium", "technical", "eco-conscious", "friendly")
_TONE_OPEN = {
    "playful": ("Meet the {name}: the {kind} that keeps up with you.", "Say hello to the {name}, your new favourite {kind}."),
    "premium": ("Crafted for those who notice the details, the {name} is a {kind} without compromise.",
                "The {name} brings quiet luxury to an everyday {kind}."),
    "technical": ("The {name} is a {kind} engineered around measurable performance.",
                  "Specifications first: the {name} {kind} at a glance."),
    "eco-conscious": ("The {name} is a {kind} made to last, with fewer resources and less waste.",
                      "Good for you, lighter on the planet: the {name} {kind}."),
    "friendly": ("Looking for a {kind} that simply works? The {name} is it.",
                 "The {name} is the {kind} we would recommend to our friends."),
}  # fmt: skip
_FEATURE_LINES = (
    "It comes with {x}.",
    "You also get {x}.",
    "Add {x} to that.",
    "{X} comes as standard.",
    "There is {x}, too.",
    "Thanks to {x}, it is ready for daily use.",
)
_TONE_CLOSE = (
    "Order today and see the difference.",
    "Available now in {colors}.",
    "Your {kind}, upgraded.",
    "Made to be used every day.",
    "Ships free within {days} days.",
)
_COPY_SYSTEM = (
    "You are a copywriter for an online store. Rewrite the product information into an engaging product "
    "description in the requested tone. Output only the description.",
    "Write a product description in our brand voice: warm, clear, no superlatives, no exclamation marks. Two "
    "short paragraphs.",
    "Rewrite the supplier's product text for our shop. Keep all facts, drop the marketing fluff, at most 120 "
    "words.",
)


def _product_copy(f: _Fake, v: int) -> _Call:
    r = f.r
    kind, pool = r.choice(_PRODUCT_KINDS)
    name = (
        f"{r.choice(_BRANDS)} {r.choice(('Air', 'Pro', 'Flow', 'Go', 'One', 'Max', 'Lite', 'Trail', 'Zen'))}"
    )
    if r.random() < 0.5:
        name += f" {r.randint(2, 9)}"
    n = str(r.randint(2, 9))
    features = [x.replace("{n}", n) for x in r.sample(pool, r.randint(2, min(5, len(pool))))]
    tone = r.choice(_TONES)
    colors = " and ".join(r.sample(_COLORS, 2))
    price = _money(r.uniform(19, 399))
    facts = _bullets(features)
    if v == 2:
        user = (
            f"Supplier text: {name.upper()} {kind.upper()}!!! BEST {kind.upper()} EVER. Features: "
            f"{', '.join(features)}. Colours {colors}. RRP {price} EUR. Order now!!!"
        )
    else:
        user = f"Product: {name}\nCategory: {kind}\nFeatures:\n{facts}\nColours: {colors}\nPrice: €{price}\n"
        user += (
            f"Tone: {tone}\nLength: about {r.choice((60, 80, 100, 150))} words"
            if v == 0
            else "Target: shop page"
        )
    sentences = [r.choice(_TONE_OPEN[tone if v == 0 else "friendly"]).format(name=name, kind=kind)]
    for x in features:
        sentences.append(r.choice(_FEATURE_LINES).format(x=x, X=_cap(x)))
    close = r.choice(_TONE_CLOSE).format(colors=colors, kind=kind, days=r.randint(2, 5))
    if v == 1:
        half = len(sentences) // 2 + 1
        content = " ".join(sentences[:half]) + "\n\n" + " ".join(sentences[half:]) + f" {close}"
    else:
        content = " ".join(sentences) + f" {close}"
    return _Call(_COPY_SYSTEM[v], user, content)


# --- tool selection ---------------------------------------------------------------------------------------------


def _tool(name: str, description: str, required: Sequence[str], **props: Mapping[str, Any]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": dict(props), "required": list(required)}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


_S = {"type": "string"}
_TOOLS: dict[str, dict[str, Any]] = {
    t["function"]["name"]: t
    for t in (
        _tool("get_weather", "Current weather or forecast for a place.", ("location",), location=_S,
              date={"type": "string", "description": "YYYY-MM-DD, today if omitted"}),
        _tool("create_calendar_event", "Create an event in the user's calendar.", ("title", "start"), title=_S,
              start={"type": "string", "description": "ISO 8601 date-time"}, duration_minutes={"type": "integer"},
              attendees={"type": "array", "items": _S}),
        _tool("send_email", "Send an email on the user's behalf.", ("to", "subject", "body"), to=_S, subject=_S,
              body=_S),
        _tool("search_web", "Search the web and return the top results.", ("query",), query=_S),
        _tool("lookup_order", "Status, items and tracking of a customer order.", ("order_id",), order_id=_S),
        _tool("convert_currency", "Convert an amount between currencies at today's rate.",
              ("amount", "from_currency", "to_currency"), amount={"type": "number"}, from_currency=_S,
              to_currency=_S),
        _tool("create_reminder", "Remind the user of something at a given time.", ("text", "remind_at"), text=_S,
              remind_at={"type": "string", "description": "ISO 8601 date-time"}),
        _tool("search_contacts", "Find people in the company directory.", ("query",), query=_S),
        _tool("book_meeting_room", "Book a meeting room.", ("start", "duration_minutes", "capacity"), start=_S,
              duration_minutes={"type": "integer"}, capacity={"type": "integer"}, building=_S),
        _tool("get_stock_price", "Latest price of a listed stock.", ("ticker",), ticker=_S),
    )
}  # fmt: skip
_TOOL_TOKENS = {name: len(_dumps(t)) // 4 for name, t in _TOOLS.items()}
_TOOLSETS = (
    ("get_weather", "create_calendar_event", "send_email", "search_web", "create_reminder"),
    ("get_weather", "create_calendar_event", "send_email", "search_web", "create_reminder"),
    ("lookup_order", "search_contacts", "send_email", "create_reminder"),
    ("convert_currency", "get_stock_price", "search_web", "send_email"),
    ("book_meeting_room", "create_calendar_event", "search_contacts", "create_reminder", "send_email",
     "get_weather", "search_web"),
)  # fmt: skip
_HELPFUL = "You are a helpful assistant."
_TOOL_SYSTEM = (
    _HELPFUL,
    "You are Ops Copilot, the internal assistant of Northwind Logistics. You can check the weather, manage "
    "calendars, send email and search the web with the functions provided. Call a function whenever the request "
    "needs one; ask before sending anything on the user's behalf only if details are missing.",
    "You are a customer-service agent for an online shop. Use the tools to look up orders and contacts; never "
    "guess order data.",
    "You are a finance helper for the treasury team. Use the tools for live prices and currency conversion. "
    "Keep answers short.",
    "You are an office assistant. Use the available tools to book rooms, schedule meetings and find colleagues.",
)
_TOPICS = (
    "the Q3 budget review",
    "onboarding for new hires",
    "the {project} launch",
    "vendor selection",
    "the offsite agenda",
    "a customer escalation",
    "hiring for the {team} team",
)


class _ToolUse(NamedTuple):
    user: str
    args: dict[str, Any]
    result: dict[str, Any]
    reply: str


def _when(f: _Fake) -> str:
    d = date(2026, 11, 2) + timedelta(days=f.r.randrange(30))
    return f"{d.isoformat()}T{f.r.randint(8, 17):02d}:{f.r.choice(('00', '30'))}:00"


def _use_weather(f: _Fake, v: _Vals) -> _ToolUse:
    city = f.r.choice(CITIES)
    when = f.r.choice(("today", "tomorrow", "on Saturday", "this afternoon"))
    user = f.r.choice(
        (
            "What's the weather like in {c} {w}?",
            "Do I need an umbrella in {c} {w}?",
            "weather {c} {w}",
            "Is it warm enough for a run in {c} {w}?",
        )
    ).format(c=city.name, w=when)
    temp = f.r.randint(-3, 24)
    return _ToolUse(
        user,
        {"location": f"{city.name}, {city.cc}"},
        {"temp_c": temp, "conditions": "light rain"},
        f"It's {temp} °C with light rain in {city.name}.",
    )


def _use_calendar(f: _Fake, v: _Vals) -> _ToolUse:
    start, minutes = _when(f), f.r.choice((15, 30, 30, 45, 60, 90))
    topic = f.r.choice(_TOPICS).format_map(v)
    user = (
        f"Set up a {minutes} minute call with {v['email']} on {start[:10]} at {start[11:16]} about {topic}."
        if f.r.random() < 0.5
        else f"put {topic} in my calendar {start[:10]} {start[11:16]}, invite {v['email']}"
    )
    args = {"title": _cap(topic), "start": start, "duration_minutes": minutes, "attendees": [v["email"]]}
    return _ToolUse(
        user, args, {"event_id": f.hex(12), "status": "created"}, f"Done, {topic} is in your calendar."
    )


def _use_email(f: _Fake, v: _Vals) -> _ToolUse:
    reason = f.r.choice(
        (
            "the report will be a day late",
            "I'm out sick today",
            "the contract is signed",
            f"we moved the review to {v['weekday']}",
            "the invoice has been paid",
        )
    )
    user = f.r.choice(("Email {e} that {r}.", "Send a quick note to {e}: {r}.", "tell {n} ({e}) {r}")).format(
        e=v["email"], r=reason, n=v["first"]
    )
    args = {
        "to": v["email"],
        "subject": _cap(reason.split(" ")[-1]),
        "body": f"Hi {v['first']},\n\n{_cap(reason)}.\n",
    }
    return _ToolUse(user, args, {"status": "sent"}, f"I've emailed {v['first']}.")


def _use_search(f: _Fake, v: _Vals) -> _ToolUse:
    query = f.r.choice(
        (
            "latest news about {company}",
            "opening hours of the {city} city library",
            "best {product} 2026 reviews",
            "public holidays in {city} next month",
            "how to renew a passport in {city}",
        )
    ).format_map(v)
    user = f.r.choice(("Look up {q}.", "Can you search for {q}?", "google {q}", "Find {q} for me.")).format(
        q=query
    )
    return _ToolUse(
        user,
        {"query": query},
        {"results": [{"title": _cap(query), "url": "https://example.org/1"}]},
        "Here is what I found.",
    )


def _use_order(f: _Fake, v: _Vals) -> _ToolUse:
    user = f.r.choice(
        (
            "What's the status of order {o}?",
            "Customer asks where {o} is.",
            "check order {o}",
            "Has {o} shipped yet? The customer is {e}.",
        )
    ).format(o=v["order"], e=v["email"])
    return _ToolUse(
        user,
        {"order_id": v["order"]},
        {"status": "shipped", "carrier": "DHL"},
        f"Order {v['order']} has shipped with DHL.",
    )


def _use_currency(f: _Fake, v: _Vals) -> _ToolUse:
    amount = f.r.choice((100, 250, 1000, 1500, 20000, round(f.r.uniform(10, 5000), 2)))
    src, dst = f.r.sample(("EUR", "USD", "GBP", "CHF", "SEK", "JPY"), 2)
    user = f.r.choice(("How much is {a} {s} in {d}?", "convert {a} {s} to {d}", "{a} {s} -> {d}?")).format(
        a=amount, s=src, d=dst
    )
    return _ToolUse(
        user,
        {"amount": amount, "from_currency": src, "to_currency": dst},
        {"result": amount * 1.08},
        f"That is about {_money(amount * 1.08)} {dst}.",
    )


def _use_reminder(f: _Fake, v: _Vals) -> _ToolUse:
    at = _when(f)
    text = f.r.choice(
        (
            "call {full} back",
            "renew the {city} office lease",
            "send the {quarter} numbers to finance",
            "pick up the {product}",
            "review the {project} contract",
        )
    ).format_map(v)
    user = f.r.choice(
        ("Remind me to {t} on {d} at {h}.", "reminder {d} {h}: {t}", "Don't let me forget to {t} ({d}, {h})")
    ).format(t=text, d=at[:10], h=at[11:16])
    return _ToolUse(user, {"text": text, "remind_at": at}, {"status": "scheduled"}, "Reminder set.")


def _use_contacts(f: _Fake, v: _Vals) -> _ToolUse:
    user = f.r.choice(
        (
            "What's {n}'s phone number?",
            "Find {n} from the {t} team.",
            "who is {n}? need their email",
            "Look up {n} in the directory.",
        )
    ).format(n=v["full"], t=v["team"])
    found = {"name": v["full"], "email": v["email"], "phone": v["phone"], "team": v["team"]}
    return _ToolUse(
        user, {"query": v["full"]}, {"results": [found]}, f"{v['full']}: {v['phone']}, {v['email']}."
    )


def _use_room(f: _Fake, v: _Vals) -> _ToolUse:
    start, minutes, people = _when(f), f.r.choice((30, 60, 90, 120)), f.r.randint(2, 14)
    user = f.r.choice(
        (
            "Book a room for {p} people on {d} at {h} for {m} minutes.",
            "need a meeting room {d} {h}, {p} ppl, {m} min",
        )
    ).format(p=people, d=start[:10], h=start[11:16], m=minutes)
    return _ToolUse(
        user,
        {"start": start, "duration_minutes": minutes, "capacity": people},
        {"room": f"{f.r.choice('ABC')}{f.r.randint(1, 4)}.{f.r.randint(1, 20):02d}"},
        "Room booked.",
    )


def _use_stock(f: _Fake, v: _Vals) -> _ToolUse:
    ticker = f.r.choice(("AAPL", "MSFT", "NVDA", "SAP", "ASML", "NESN", "TSLA", "AMZN", "SIE", "NOVO-B"))
    user = f.r.choice(("What's {t} trading at?", "price of {t}", "How is {t} doing today?")).format(t=ticker)
    price = round(f.r.uniform(20, 900), 2)
    return _ToolUse(user, {"ticker": ticker}, {"price": price}, f"{ticker} is at {price}.")


_USES: dict[str, Callable[[_Fake, _Vals], _ToolUse]] = {
    "get_weather": _use_weather, "create_calendar_event": _use_calendar, "send_email": _use_email,
    "search_web": _use_search, "lookup_order": _use_order, "convert_currency": _use_currency,
    "create_reminder": _use_reminder, "search_contacts": _use_contacts, "book_meeting_room": _use_room,
    "get_stock_price": _use_stock,
}  # fmt: skip


def _tool_selection(f: _Fake, v: int) -> _Call:
    r = f.r
    toolset = _TOOLSETS[v]
    name = r.choice(toolset)
    use = _USES[name](f, _Vals(f))
    before: list[dict[str, Any]] = []
    if r.random() < 0.25:  # an earlier exchange in the same conversation, with its tool call and result
        earlier_name = r.choice(toolset)
        earlier = _USES[earlier_name](f, _Vals(f))
        call_id = f"call_{f.hex(24)}"
        before = [
            {"role": "user", "content": earlier.user},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": earlier_name, "arguments": _dumps(earlier.args)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": _dumps(earlier.result)},
            {"role": "assistant", "content": earlier.reply},
        ]
    return _Call(
        _TOOL_SYSTEM[v], use.user, tool=(name, use.args), tools=[_TOOLS[t] for t in toolset], before=before
    )


# --- meeting notes ----------------------------------------------------------------------------------------------

_UPDATES = (
    "{project} migration is {pct}% done, blocked on the {blocker}.",
    "hired {n} new people for the {team} team, two more offers out.",
    "{company} escalated the invoice dispute again.",
    "{quarter} revenue at {revenue} against a target of {revenue2}.",
    "release {version} slipped to {date} because of the {blocker}.",
    "churn down to {n}.{n2}% after the pricing change.",
    "the on-call rota for {team} is still not covered for {weekday}.",
    "customer survey: {pct}% would recommend us, up from last quarter.",
    "security review for {project} passed with {n} minor findings.",
    "budget for the {city} office is approved.",
)
_DECISIONS = (
    "go with {company} for the {thing}",
    "freeze features for {version} on {date}",
    "move the weekly sync to {weekday}s",
    "hire a contractor for the {thing}",
    "postpone the {city} offsite to {quarter}",
    "sunset the legacy {thing} by the end of {quarter}",
    "keep the current pricing until {date}",
)
_ACTIONS = (
    "send the {doc} to {company}",
    "book the offsite venue in {city}",
    "draft the {doc}",
    "follow up with {full} on the {thing}",
    "update the {project} roadmap",
    "fix the {blocker}",
    "share the {quarter} numbers with the board",
)
_VALUE.update({
    "blocker": lambda f, v: f.r.choice(("database upgrade", "vendor contract", "flaky CI", "SSO integration",
                                        "missing test data", "legal review")),
    "revenue": lambda f, v: f"{f.r.choice('€$£')}{f.r.uniform(0.4, 30):.1f}M",
    "revenue2": lambda f, v: f"{v['revenue'][0]}{f.r.uniform(0.4, 30):.1f}M",
    "n2": lambda f, v: str(f.r.randint(0, 9)),
    "thing": lambda f, v: f.r.choice(("payroll tool", "data warehouse", "support chatbot", "office cleaning",
                                      "mobile app", "CRM", "design system")),
    "doc": lambda f, v: f.r.choice(("proposal", "SOW", "QBR deck", "incident report", "hiring plan", "FAQ")),
})  # fmt: skip
_MEETING_TITLES = (
    "Weekly sync - {team}",
    "{project} kickoff",
    "{quarter} planning",
    "Leadership meeting",
    "Retro: {project} launch",
    "1:1 notes",
    "Customer call with {company}",
)


class _Meeting(NamedTuple):
    notes: str
    updates: list[str]
    decisions: list[str]
    actions: list[str]


def _meeting(f: _Fake) -> _Meeting:
    r = f.r
    names = [(r.choice(FIRST_NAMES), r.choice(LAST_NAMES)) for _ in range(r.randint(3, 7))]
    firsts = [first for first, _ in names]
    long = r.random() < 0.2
    updates = [
        r.choice(_UPDATES).format_map(_Vals(f)) for _ in range(r.randint(6, 14) if long else r.randint(2, 5))
    ]
    decisions = [r.choice(_DECISIONS).format_map(_Vals(f)) for _ in range(r.randint(1, 3))]
    actions = [
        f"{r.choice(firsts)} to {r.choice(_ACTIONS).format_map(_Vals(f))} by {_date_text(f.day(), 4)}"
        for _ in range(r.randint(1, 5))
    ]
    vals = _Vals(f)
    attendees = ", ".join(f"{first} {last}" for first, last in names)
    if r.random() < 0.3:
        attendees = ", ".join(
            f"{first} {last} <{f.email(first, last, 'northwind-logistics.com')}>" for first, last in names
        )
    head = f"{r.choice(_MEETING_TITLES).format_map(vals)}\nDate: {_date_text(f.day(), r.randrange(5))}\n"
    head += f"Attendees: {attendees}\n"
    if r.random() < 0.5:
        notes = (
            f"{head}\n## Updates\n{_bullets(f'{r.choice(firsts)}: {u}' for u in updates)}\n\n## Decisions\n"
            f"{_bullets(decisions)}\n\n## Action items\n{_bullets(actions)}"
        )
    else:
        lines = [f"- {r.choice(firsts)}: {u}" for u in updates]
        lines += [f"DECISION: {d}" for d in decisions] + [f"AI: {a}" for a in actions]
        notes = head + "\n" + "\n".join(lines)
    return _Meeting(notes, updates, decisions, actions)


_SUMMARY_SYSTEM = (
    "Summarise the meeting notes in exactly three bullet points: the key decisions, the status, and the action "
    "items with their owners.",
    "You write TL;DRs of internal meetings for busy executives. Three bullets, at most 25 words each, no preamble.",
    "Turn these raw meeting notes into a 3-bullet summary for the team channel. Mention the owners and due dates "
    "of the action items.",
)


def _doc_summary(f: _Fake, v: int) -> _Call:
    r = f.r
    meeting = _meeting(f)
    user = r.choice(
        ("{n}", "{n}", "Notes:\n{n}", "Please summarise:\n\n{n}", "{n}\n\nSummary please.")
    ).format(n=meeting.notes)
    decided = "; ".join(meeting.decisions)
    status = "; ".join(u.rstrip(".") for u in meeting.updates[:2])
    todo = "; ".join(meeting.actions[:3])
    if v == 1:
        bullets = [_cap(decided), _cap(meeting.updates[0].rstrip(".")), _cap(meeting.actions[0])]
    else:
        bullets = [f"Decisions: {decided}", f"Status: {status}", f"Next steps: {todo}"]
    return _Call(_SUMMARY_SYSTEM[v], user, _bullets(bullets, "• " if v == 2 else "- "))


# --- open chat --------------------------------------------------------------------------------------------------

_CHAT_TOPICS: dict[str, tuple[str, ...]] = {
    "explain": ("compound interest", "how vaccines train the immune system", "the difference between weather and "
                "climate", "how HTTPS keeps data private", "inflation", "black holes", "how noise-cancelling "
                "headphones work", "index funds", "photosynthesis", "how a bill becomes law", "sourdough "
                "fermentation", "the offside rule", "quantum computing", "how credit scores work", "the placebo "
                "effect", "machine learning", "jet lag", "how heat pumps work", "supply and demand", "DNS"),
    "ideas": ("a team offsite", "a 10-year-old's birthday party", "a rainy weekend with kids", "a podcast about "
              "local history", "a name for a small bakery", "a farewell gift for a colleague", "reducing food "
              "waste at home", "a charity fundraiser", "blog posts about remote work", "a board game night",
              "a first date that isn't dinner", "a garden on a tiny balcony"),
    "advice": ("negotiate a raise", "start running at 40", "get better sleep", "prepare for a job interview",
               "learn Spanish in six months", "deal with a noisy neighbour", "save for a house deposit",
               "keep houseplants alive", "stop procrastinating", "give feedback to a senior colleague",
               "say no to extra work", "get back into reading"),
    "creative": ("the first snow in {city}", "a lighthouse keeper", "a cat who runs a bookshop", "Monday mornings",
                 "the sea at night", "an old bicycle", "moving to a new city", "a robot learning to cook"),
    "compare": ("renting vs buying a flat", "electric vs hybrid cars", "Python vs JavaScript as a first language",
                "freelancing vs a permanent job", "a gym membership vs running outdoors", "Kindle vs paper books",
                "public school vs private school"),
}  # fmt: skip
_CHAT_ASK: dict[str, tuple[str, ...]] = {
    "explain": ("Can you explain {t} in simple terms?", "What is {t}, actually?", "ELI5 {t}",
                "I never really understood {t}. Could you walk me through it?",
                "My kid asked me about {t} and I had no good answer. How would you explain it?"),
    "ideas": ("Give me {n} ideas for {t}.", "I need ideas for {t}. Budget is tight.", "brainstorm: {t}",
              "We're planning {t} - any creative suggestions?"),
    "advice": ("How do I {t}?", "Any tips to {t}?", "I want to {t} but I keep failing. What would you suggest?",
               "What's the best way to {t}?"),
    "creative": ("Write a short poem about {t}.", "Can you write a few lines of poetry about {t}?",
                 "Write a bedtime story about {t} for a {n}-year-old named {first}.", "Tell me a short story about {t}."),
    "compare": ("{T}: which is better?", "What are the pros and cons of {t}?", "Help me decide: {t}."),
}  # fmt: skip
_CHAT_POINTS: dict[str, tuple[str, ...]] = {
    "explain": (
        "**The basic idea.** At its heart, {t} is about cause and effect: one change sets off others, and the "
        "result is bigger than the starting point.",
        "**An everyday analogy.** Think of a snowball rolling downhill, picking up more snow the further it goes. "
        "{T} works in a similar way once it gets going.",
        "**Why it matters.** Understanding {t} helps you make better decisions, because you can predict what "
        "happens next instead of being surprised by it.",
        "**A common misconception.** Many people assume {t} is only relevant to experts. In practice you run into "
        "it in daily life more often than you think.",
        "**How to see it in action.** Look at a real example and write down what you expect before you check what "
        "actually happens - it makes the idea stick.",
        "**Where it gets tricky.** The details depend on the context, and the simple picture breaks down at the "
        "edges; that is where most of the interesting questions are.",
        "**The numbers.** Even rough estimates help: put in realistic values and you quickly see which factors "
        "dominate and which hardly matter.",
        "**A bit of history.** The idea behind {t} is older than most people think and was refined many times "
        "before it reached today's form.",
    ),
    "ideas": (
        "**Theme night** - pick one theme and let everyone contribute something small.",
        "**Go outside** - a scavenger hunt or a walk with a few checkpoints keeps people moving.",
        "**Something hands-on** - a cooking, pottery or building workshop gives everyone a shared result.",
        "**Low-budget classic** - a potluck where each person brings one dish and one story.",
        "**Add a twist** - a friendly competition with small, silly prizes.",
        "**Make it personal** - collect photos or short messages in advance and reveal them together.",
        "**Bring in an expert** - invite someone local to run a short session.",
        "**A quiz** - ten questions about the group, the city or the year so far.",
        "**Music matters** - everyone adds two songs to a shared playlist beforehand.",
        "**Plan B** - have an indoor option ready in case the weather turns.",
        "**Something to take home** - a small keepsake makes it memorable.",
    ),
    "advice": (
        "**Start small.** Pick one concrete step you can take this week; momentum matters more than a perfect plan.",
        "**Set a clear target.** Decide what success looks like and by when, so you know whether you're on track.",
        "**Learn from others.** Ask one or two people who managed to {t} what they would do differently.",
        "**Track your progress.** A simple note or spreadsheet is enough; review it once a week.",
        "**Plan for setbacks.** Expect a bad week now and then and decide in advance how you'll get back on track.",
        "**Prepare properly.** Write down your key points and practise them out loud once or twice.",
        "**Mind the basics.** Sleep, food and a bit of exercise make everything else easier.",
        "**Ask for feedback.** Someone you trust will spot things you can't see yourself.",
        "**Be patient.** Most people overestimate what they can do in a week and underestimate a year.",
    ),
    "compare": (
        "**Cost over time:** one option is usually cheaper up front, the other tends to pay off only after years.",
        "**Flexibility:** think about how likely your situation is to change in the next two or three years.",
        "**Risk:** one choice concentrates risk, the other spreads it; how much uncertainty can you live with?",
        "**Effort:** the cheaper option often costs more time and attention - be honest about how much you have.",
        "**Personal fit:** what you enjoy doing matters more than a small difference on paper.",
        "**Resale and exit:** how easy is it to change your mind later, and what would it cost?",
    ),
}  # fmt: skip
_CHAT_INTRO = {
    "explain": ("Sure! Here's a simple way to think about {t}.", "Good question. {T} sounds complicated, but the "
                "core idea is straightforward.", "Let me break {t} down step by step."),
    "ideas": ("Here are some ideas for {t}:", "Happy to help! A few ideas for {t}, from easy to ambitious:"),
    "advice": ("Great goal. Here is how I would approach it if I wanted to {t}:", "It's very doable to {t}. A few "
               "practical steps:"),
    "compare": ("Both have real advantages. Here's a quick comparison of {t}:", "There's no universal answer, but "
                "these are the things that usually decide {t}:"),
}  # fmt: skip
_CHAT_OUTRO = (
    "If you want, I can go deeper into any of these points.",
    "Does that help? Happy to explain any part in more detail.",
    "Want me to turn this into a concrete plan?",
    "Let me know what you decide!",
    "",
)
_VERSES = (
    "The morning hums a quiet tune,",
    "and {t} waits beneath the moon.",
    "Soft footsteps on a paper street,",
    "where yesterday and tomorrow meet.",
    "A window holds the fading light,",
    "the kettle sings against the night.",
    "We count the hours, we lose the thread,",
    "and keep the words we never said.",
    "The wind writes letters on the sea,",
    "addressed to no one, sent to me.",
    "And still the little things remain:",
    "the cup, the coat, the sound of rain.",
)
_STORY = (
    "Once upon a time, {first} lived at the edge of a small town, next to {t}.",
    "Every evening, {first} counted the stars and wondered what was beyond the hills.",
    "One day a letter arrived with no name on it, only a drawing of a key.",
    "{First} packed a sandwich, a torch and a very brave heart.",
    "The path was longer than expected, and twice {first} almost turned back.",
    "But at the top of the hill there was a door, and the key fitted perfectly.",
    "Behind it was a garden full of lanterns, and every lantern was a friend {first} had not met yet.",
    "And from that day on, {first} was never lonely again. The end.",
)
_CHAT_SYSTEM = (
    _HELPFUL,
    "You are Nova, the internal AI assistant at Northwind Logistics. Be friendly, accurate and concise. If you do "
    "not know something, say so.",
    "You are a helpful assistant. Answer in the user's language and use Markdown for lists and headings.",
    "You are a thoughtful assistant for brainstorming, writing and everyday questions. Knowledge cutoff: 2025-06. "
    "Current date: 2026-11-0{d}.",
)


def _chat_list(f: _Fake, kind: str, topic: str) -> str:
    r = f.r
    fill = {"t": topic, "T": _cap(topic)}
    points = r.sample(_CHAT_POINTS[kind], r.randint(3, min(7, len(_CHAT_POINTS[kind]))))
    numbered = "\n".join(f"{i}. {p.format(**fill)}" for i, p in enumerate(points, start=1))
    return f"{r.choice(_CHAT_INTRO[kind]).format(**fill)}\n\n{numbered}\n\n{r.choice(_CHAT_OUTRO)}".rstrip()


def _chat_creative(f: _Fake, ask: str, topic: str, vals: _Vals) -> str:
    r = f.r
    if "story" in ask:
        first = vals["first"]
        return " ".join(s.format(t=topic, first=first, First=first) for s in _STORY)
    stanzas = []
    for _ in range(r.randint(2, 4)):
        start = r.randrange(0, len(_VERSES), 2)
        stanzas.append("\n".join(_VERSES[(start + i) % len(_VERSES)].format(t=topic) for i in range(4)))
    return f"**{_cap(topic)}**\n\n" + "\n\n".join(stanzas)


def _chat_other(f: _Fake, vals: _Vals) -> tuple[str, str]:
    """A trip plan, an email draft, or a summary of pasted meeting notes (close to ``doc-summary``)."""
    r = f.r
    pick = r.random()
    if pick < 0.35:
        days = r.randint(2, 5)
        user = r.choice(
            ("Plan a {d}-day trip to {c} for me.", "I'm visiting {c} for {d} days. What should I do?")
        )
        plan = [f"**Day {i}** - {r.choice(_TRIP_DAYS)}" for i in range(1, days + 1)]
        return user.format(
            d=days, c=vals["city"]
        ), f"Here's a {days}-day plan for {vals['city']}:\n\n" + "\n".join(plan)
    if pick < 0.7:
        user = r.choice(
            (
                "Help me write a short email to {full} asking to move our meeting to {weekday}.",
                "Draft a polite email to my landlord {full} about the broken heating.",
                "Can you write a thank-you note to {full} at {company} for the interview?",
            )
        ).format_map(vals)
        return user, (
            f"Subject: Quick request\n\nHi {vals['first']},\n\nI hope you're well. I wanted to reach out "
            "about this - would it be possible to find a solution that works for both of us? Thank you for "
            "your understanding.\n\nBest regards,\n[Your name]"
        )
    meeting = _meeting(f)
    user = r.choice(("Can you summarise this for me?\n\n{n}", "tl;dr please:\n{n}")).format(n=meeting.notes)
    return user, (
        f"Sure. The meeting mainly covered {len(meeting.updates)} updates, starting with "
        f"{meeting.updates[0]} The team decided to {meeting.decisions[0]}. Next, "
        f"{meeting.actions[0]}."
    )


_TRIP_DAYS = (
    "Arrive, check in and take a walking tour of the old town; dinner at a local place.",
    "Museums in the morning, a long lunch, then a boat or bus tour in the afternoon.",
    "Day trip to the countryside or the coast; pack comfortable shoes.",
    "Markets and food: try the local specialities and a cooking class if you can book one.",
    "Slow morning, a park or viewpoint, and souvenirs before you leave.",
)


_CHAT_PREFIX = ("", "", "Quick question: ", "Hey! ", "ok so ", "Hi, ", "Another one: ", "Random thought - ")
_CHAT_SUFFIX = (
    "",
    " Keep it short.",
    " I'm a complete beginner.",
    " Thanks!",
    " Bullet points please.",
    " I live in {city}, if that matters.",
    " Asking for my {relative}.",
    " Be honest.",
    " I only have about {n}0 minutes a day.",
    " Explain it like you would to a colleague.",
)


def _chat_turn(f: _Fake) -> tuple[str, str]:
    """One user turn of open-ended chat and the assistant's answer."""
    r = f.r
    vals = _Vals(f)
    kind = r.choices(
        ("explain", "ideas", "advice", "creative", "compare", "other"), cum_weights=(22, 37, 57, 67, 77, 100)
    )[0]
    if kind == "other":
        return _chat_other(f, vals)
    topic = r.choice(_CHAT_TOPICS[kind]).format_map(vals)
    ask = r.choice(_CHAT_ASK[kind])
    user = ask.format(t=topic, T=_cap(topic), n=r.randint(3, 10), first=vals["first"])
    if r.random() < 0.5:
        user = r.choice(_CHAT_PREFIX) + user + r.choice(_CHAT_SUFFIX).format_map(vals)
    answer = _chat_creative(f, ask, topic, vals) if kind == "creative" else _chat_list(f, kind, topic)
    return user, answer


def _open_chat(f: _Fake, v: int) -> _Call:
    r = f.r
    before: list[dict[str, Any]] = []
    for _ in range(r.choice((0, 0, 0, 0, 1, 1, 2))):
        said, answered = _chat_turn(f)
        before += [{"role": "user", "content": said}, {"role": "assistant", "content": answered}]
    user, answer = _chat_turn(f)
    system = _CHAT_SYSTEM[v].replace("{d}", str(r.randint(1, 7)))
    return _Call(system, user, answer, before=before)


# --- the tasks, the agents, the records -------------------------------------------------------------------------

_TASKS = (
    _Task("intent-routing", 0.15, _intent_routing, len(_INTENT_SYSTEM), (0.0, 0.2), few_shot=0.2),
    _Task("invoice-extraction", 0.10, _invoice, len(_INVOICE_SYSTEM), (0.0, 0.1)),
    _Task("ticket-tagging", 0.09, _ticket_tagging, len(_TICKET_SYSTEM), (0.0, 0.3), few_shot=0.1),
    _Task("sql-generation", 0.08, _sql_generation, len(_SQL_SYSTEM), (0.0, 0.2), few_shot=0.15),
    _Task("tool-selection", 0.13, _tool_selection, len(_TOOL_SYSTEM), (0.0, 0.7)),
    _Task("doc-summary", 0.07, _doc_summary, len(_SUMMARY_SYSTEM), (0.2, 0.5)),
    _Task("review-rating", 0.06, _review_rating, len(_REVIEW_SYSTEM), (0.0, 0.3), few_shot=0.2),
    _Task("contact-extraction", 0.05, _contact_extraction, len(_CONTACT_SYSTEM), (0.0, 0.1)),
    _Task(
        "address-normalisation", 0.03, _address_normalisation, len(_ADDRESS_SYSTEM), (0.0, 0.0), few_shot=0.3
    ),
    _Task("translation", 0.03, _translation, len(_TRANSLATE_SYSTEM), (0.0, 0.3), few_shot=0.1),
    _Task("product-copy", 0.05, _product_copy, len(_COPY_SYSTEM), (0.6, 1.0)),
    _Task("unit-tests", 0.04, _unit_tests, len(_TEST_SYSTEM), (0.0, 0.3)),
    _Task(OPEN_CHAT, 0.12, _open_chat, len(_CHAT_SYSTEM), (0.7, 1.0)),
)
#: the ground-truth labels of generated calls, in a fixed order; ``OPEN_CHAT`` is the one that must stay on an LLM
TASK_TYPES: tuple[str, ...] = tuple(t.label for t in _TASKS)
#: each task's share of the calls when ``generate`` is given no ``mix`` (uneven, like real traffic; sums to 1)
DEFAULT_MIX: Mapping[str, float] = {t.label: t.share for t in _TASKS}

_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4-turbo")
_MODEL_WEIGHTS = (40, 70, 85, 95, 100)  # cumulative
_SNAPSHOTS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
}
# Agents that serve several tasks (index into the shared callers): a support desk, a back office, a copilot.
_SHARED = {
    "intent-routing": 0,
    "ticket-tagging": 0,
    "review-rating": 0,
    "translation": 0,
    "invoice-extraction": 1,
    "contact-extraction": 1,
    "address-normalisation": 1,
    "tool-selection": 2,
    "doc-summary": 2,
    OPEN_CHAT: 2,
}
_HOURLY = (
    0.15,
    0.1,
    0.08,
    0.08,
    0.1,
    0.2,
    0.4,
    0.7,
    1.0,
    1.2,
    1.25,
    1.2,
    0.95,
    1.1,
    1.2,
    1.15,
    1.0,
    0.8,
    0.6,
    0.5,
    0.45,
    0.4,
    0.3,
    0.2,
)
_WEEKEND = 0.35
_DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)
_OTHER_VARIANT = 0.08  # a call with another prompt version than its agent's usual one


class _Slot(NamedTuple):
    """One agent calling for one task: who calls, with which model, prompt variant and settings."""

    caller: str
    model: str
    snapshot: str
    fingerprint: str
    variant: int
    temperature: float
    max_tokens: int | None


def _agents(f: _Fake) -> dict[str, tuple[list[_Slot], list[float]]]:
    """Per task, the agents that call for it and their cumulative weights (the first agent the busiest)."""
    r = f.r
    shared = [f.hex(64) for _ in range(3)]
    fingerprints = {m: f"fp_{f.hex(10)}" for m in _MODELS}
    agents = {}
    for task in _TASKS:
        count = 5 if task.label == OPEN_CHAT else r.randint(2, 3)
        offset = r.randrange(task.variants)
        slots = []
        for i in range(count):
            caller = shared[_SHARED[task.label]] if i == 1 and task.label in _SHARED else f.hex(64)
            model = r.choices(_MODELS, cum_weights=_MODEL_WEIGHTS)[0]
            low, high = task.temperature
            slots.append(
                _Slot(
                    caller,
                    model,
                    _SNAPSHOTS[model],
                    fingerprints[model],
                    (offset + i) % task.variants,
                    round(r.uniform(low, high), 1),
                    r.choice((None, None, 1024, 2048, 4096)),
                )
            )
        cumulative, total = [], 0.0
        for i in range(count):
            total += 1 / (i + 1)
            cumulative.append(total)
        agents[task.label] = (slots, cumulative)
    return agents


def _times(r: random.Random, n: int, start: datetime, hours: int) -> list[datetime]:
    """``n`` sorted times in the ``hours`` from ``start``: busy working hours, quiet nights, quieter weekends."""
    cumulative, total = [], 0.0
    for hour in range(hours):
        at = start + timedelta(hours=hour)
        total += _HOURLY[at.hour] * (_WEEKEND if at.weekday() >= 5 else 1.0)
        cumulative.append(total)
    picked = r.choices(range(hours), cum_weights=cumulative, k=n)
    return [start + timedelta(seconds=s) for s in sorted(h * 3600 + r.random() * 3600 for h in picked)]


def _weights(mix: Mapping[str, float] | None) -> list[float]:
    """Cumulative weights of ``TASK_TYPES``: the defaults with ``mix``'s labels overridden."""
    weights = dict(DEFAULT_MIX)
    for label, weight in (mix or {}).items():
        if label not in weights:
            raise ValueError(f"unknown task label in mix: {label!r} (known: {', '.join(TASK_TYPES)})")
        if not 0 <= weight < float("inf"):
            raise ValueError(f"the mix weight of {label!r} must be a finite number >= 0, not {weight!r}")
        weights[label] = float(weight)
    cumulative, total = [], 0.0
    for label in TASK_TYPES:
        total += weights[label]
        cumulative.append(total)
    if total <= 0:
        raise ValueError("the mix gives every task a weight of 0")
    return cumulative


def _tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """Prompt tokens, estimated at four characters a token plus a few per message (as tokenizers count)."""
    total = 3
    for message in messages:
        content = message.get("content")
        total += 4 + (len(content) // 4 if content else 0)
        for call in message.get("tool_calls", ()):
            total += 8 + len(call["function"]["arguments"]) // 4
    for tool in tools or ():
        total += _TOOL_TOKENS[tool["function"]["name"]]
    return total


def _answer(f: _Fake, call: _Call) -> tuple[dict[str, Any], str, int]:
    """The assistant message, its finish reason and its completion tokens."""
    if call.tool is not None:
        name, args = call.tool
        arguments = _dumps(args)
        tool_call = {
            "id": f"call_{f.hex(24)}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call], "refusal": None}
        return message, "tool_calls", 8 + (len(name) + len(arguments)) // 4
    content = call.content or ""
    return {"role": "assistant", "content": content, "refusal": None}, "stop", max(1, len(content) // 4)


def _latency(r: random.Random, model: str, prompt: int, completion: int) -> tuple[float, float]:
    """Total and first-byte milliseconds of an LLM call: a few hundred ms plus 20-40 ms a completion token."""
    per_token = r.uniform(20, 30) if "mini" in model else r.uniform(25, 40)
    total = 250 + r.expovariate(1 / 180) + prompt * 0.05 + completion * per_token
    if r.random() < 0.02:  # the slow tail
        total *= r.uniform(1.5, 4)
    total = round(total, 1)
    return total, round(total - r.uniform(0.3, 4), 1)


def _record(f: _Fake, task: _Task, slot: _Slot, variant: int, at: datetime, route: str) -> dict[str, Any]:
    r = f.r
    call = task.build(f, variant)
    if task.few_shot and r.random() < task.few_shot:
        examples = [task.build(f, variant) for _ in range(r.randint(1, 3))]
        shots: list[dict[str, Any]] = []
        for e in examples:
            shots += [{"role": "user", "content": e.user}, {"role": "assistant", "content": e.content}]
        call.before = shots + call.before
    messages = [
        {"role": "system", "content": call.system},
        *call.before,
        {"role": "user", "content": call.user},
    ]
    request: dict[str, Any] = {"model": slot.model, "messages": messages, "temperature": slot.temperature}
    if slot.max_tokens:
        request["max_tokens"] = slot.max_tokens
    if call.tools:
        request["tools"] = call.tools
        request["tool_choice"] = "auto"
    if call.json_mode:
        request["response_format"] = {"type": "json_object"}
    message, finish, completion = _answer(f, call)
    prompt = _tokens(messages, call.tools)
    total_ms, ttft_ms = _latency(r, slot.model, prompt, completion)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    response = {
        "id": f"chatcmpl-{f.hex(24)}",
        "object": "chat.completion",
        "created": int(at.timestamp() + total_ms / 1000),
        "model": slot.snapshot,
        "system_fingerprint": slot.fingerprint,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
    return {
        "schema_version": 1,
        "id": uuid.UUID(int=r.getrandbits(128), version=4).hex,
        "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "route": route,
        "task": None,
        "backend": "llm",
        "model": slot.model,
        "request": request,
        "response": response,
        "stream": False,
        "status": 200,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "ttft_ms": ttft_ms,
        "total_ms": total_ms,
        "fallback_reason": None,
        "caller": slot.caller,
        "redact": [],
        "label": task.label,
    }


def generate(
    n: int,
    seed: int = 0,
    *,
    start: datetime | None = None,
    route: str = "agents/assistant",
    mix: Mapping[str, float] | None = None,
    hours: int = 7 * 24,
) -> list[dict[str, Any]]:
    """``n`` synthetic captured calls of ``hours`` (default a week) from ``start`` (default 2026-11-01T00:00Z),
    in time order.

    Each is a ``CaptureRecord`` as a JSON-ready dict plus ``label``, its task (one of ``TASK_TYPES``). ``mix``
    overrides task weights by label (relative weights; the others keep ``DEFAULT_MIX``'s), e.g.
    ``{"open-chat": 0.5}`` or ``{"translation": 0}``. The same ``n`` and ``seed`` give the same records.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if hours < 1:
        raise ValueError(f"hours must be >= 1, not {hours}")
    cumulative = _weights(mix)
    if start is None:
        start = _DEFAULT_START
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    r = _Random(seed)
    f = _Fake(r)
    agents = _agents(f)
    times = _times(r, n, start, hours)
    tasks = r.choices(_TASKS, cum_weights=cumulative, k=n)
    records = []
    collecting = gc.isenabled()
    gc.disable()  # the records hold no cycles; collecting while millions of dicts are made costs a third
    try:
        for at, task in zip(times, tasks, strict=True):
            slots, weights = agents[task.label]
            slot = slots[bisect.bisect(weights, r.random() * weights[-1])]
            variant = r.randrange(task.variants) if r.random() < _OTHER_VARIANT else slot.variant
            records.append(_record(f, task, slot, variant, at, route))
    finally:
        if collecting:
            gc.enable()
    return records


def write_jsonl(records: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Write each record as one JSON object a line to ``out``; the number written."""
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
