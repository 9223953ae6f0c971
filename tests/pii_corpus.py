"""The labelled PII corpus (tests/data/pii-corpus.jsonl): how it is generated, and how the sanitiser is scored on it.

    .venv/bin/python -m tests.pii_corpus generate   # rewrite tests/data/pii-corpus.jsonl (fixed seed: same file)
    .venv/bin/python -m tests.pii_corpus score      # precision/recall per class and records/s (docs/sanitization.md)

Each record is ``{"id", "lang", "text", "spans": [{"class", "start", "end"}]}``: sentences from templates in
English, German, French, Spanish, Italian and Dutch, filled with generated values. Phone numbers are valid
numbers of 13 countries (libphonenumber checks them) written in international and national formats, cards pass
Luhn, IBANs their checksum; street addresses follow each country's format, with postcode and city when the
template has them (then the city is part of the address, not a separate Location). Dates that are not dates of
birth, times, versions, prices and order numbers appear unlabelled, so a recogniser that redacts them loses
precision.
"""

from __future__ import annotations

import json
import random
import re
import string
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import phonenumbers

CORPUS = Path(__file__).resolve().parent / "data" / "pii-corpus.jsonl"
SEED = 11  # issue 11
RECORDS = 420

# --- values -----------------------------------------------------------------------------------------------------

FIRST = {
    "en": [
        "James",
        "Mary",
        "Robert",
        "Patricia",
        "Michael",
        "Jennifer",
        "David",
        "Linda",
        "Sarah",
        "Thomas",
        "Emily",
        "Daniel",
        "Olivia",
        "Matthew",
        "Jessica",
        "Andrew",
        "Laura",
        "Christopher",
        "Rachel",
        "Kevin",
    ],
    "de": ["Hans", "Anna", "Lukas", "Sophie", "Jürgen", "Katrin", "Stefan", "Monika", "Felix", "Ursula"],
    "fr": [
        "Pierre",
        "Camille",
        "Julien",
        "Amélie",
        "Nicolas",
        "Céline",
        "Antoine",
        "Élodie",
        "Mathieu",
        "Chloé",
    ],
    "es": ["Carlos", "Lucía", "Javier", "Carmen", "Alejandro", "Isabel", "Miguel", "Elena", "Pablo", "Rosa"],
    "it": [
        "Giuseppe",
        "Giulia",
        "Marco",
        "Francesca",
        "Alessandro",
        "Chiara",
        "Luca",
        "Valentina",
        "Matteo",
        "Sara",
    ],
    "nl": ["Jan", "Sanne", "Pieter", "Femke", "Willem", "Lotte", "Daan", "Anouk", "Bram", "Eva"],
    "world": [
        "Priya",
        "Rahul",
        "Wei",
        "Mei",
        "Hiroshi",
        "Yuki",
        "Ahmed",
        "Fatima",
        "Olusegun",
        "Amara",
        "Mohammed",
        "Aisha",
        "Arjun",
        "Ananya",
        "Kenji",
        "Sakura",
        "Omar",
        "Leila",
        "Chinedu",
        "Ngozi",
    ],
}
LAST = {
    "en": [
        "Smith",
        "Johnson",
        "Williams",
        "Brown",
        "Jones",
        "Miller",
        "Davis",
        "Wilson",
        "Anderson",
        "Taylor",
        "Moore",
        "Jackson",
        "Martin",
        "Thompson",
        "White",
        "Harris",
        "Clark",
        "Lewis",
        "Walker",
        "Hall",
    ],
    "de": [
        "Müller",
        "Schmidt",
        "Schneider",
        "Fischer",
        "Weber",
        "Meyer",
        "Wagner",
        "Becker",
        "Hoffmann",
        "Schulz",
    ],
    "fr": [
        "Dubois",
        "Lefebvre",
        "Moreau",
        "Laurent",
        "Girard",
        "Rousseau",
        "Fontaine",
        "Chevalier",
        "Garnier",
        "Mercier",
    ],
    "es": [
        "García",
        "Fernández",
        "González",
        "Rodríguez",
        "López",
        "Martínez",
        "Sánchez",
        "Pérez",
        "Gómez",
        "Ruiz",
    ],
    "it": [
        "Rossi",
        "Russo",
        "Ferrari",
        "Esposito",
        "Bianchi",
        "Romano",
        "Colombo",
        "Ricci",
        "Marino",
        "Greco",
    ],
    "nl": [
        "de Jong",
        "Jansen",
        "de Vries",
        "van den Berg",
        "Bakker",
        "Visser",
        "Smit",
        "Meijer",
        "de Boer",
        "Mulder",
    ],
    "world": [
        "Sharma",
        "Patel",
        "Wang",
        "Li",
        "Tanaka",
        "Suzuki",
        "Hassan",
        "Ali",
        "Adeyemi",
        "Okafor",
        "Khan",
        "Rahman",
        "Gupta",
        "Iyer",
        "Nakamura",
        "Sato",
        "Haddad",
        "Nasser",
        "Eze",
        "Okonkwo",
    ],
}
CITIES = {
    "en": [
        "London",
        "Manchester",
        "New York",
        "Chicago",
        "San Francisco",
        "Boston",
        "Seattle",
        "Toronto",
        "Sydney",
        "Dublin",
        "Edinburgh",
        "Los Angeles",
        "Denver",
        "Atlanta",
        "Melbourne",
        "Vancouver",
    ],
    "de": ["Berlin", "Munich", "Hamburg", "Cologne", "Frankfurt", "Vienna", "Zurich", "Stuttgart"],
    "fr": ["Paris", "Lyon", "Marseille", "Toulouse", "Bordeaux", "Brussels", "Geneva", "Nice"],
    "es": ["Madrid", "Barcelona", "Valencia", "Seville", "Bilbao", "Mexico City", "Buenos Aires", "Lisbon"],
    "it": ["Rome", "Milan", "Naples", "Turin", "Florence", "Bologna", "Venice", "Palermo"],
    "nl": ["Amsterdam", "Rotterdam", "Utrecht", "The Hague", "Eindhoven", "Antwerp", "Ghent", "Groningen"],
    "world": [
        "Tokyo",
        "Mumbai",
        "Delhi",
        "Lagos",
        "Nairobi",
        "Cairo",
        "Singapore",
        "Shanghai",
        "Seoul",
        "Dubai",
    ],
}
COUNTRIES = [
    "Germany",
    "France",
    "Spain",
    "Italy",
    "Canada",
    "Japan",
    "India",
    "Brazil",
    "Kenya",
    "Australia",
    "Mexico",
    "Ireland",
    "Portugal",
    "Sweden",
    "Nigeria",
    "Egypt",
    "Argentina",
    "Poland",
]
ORGS = [
    "Google",
    "Microsoft",
    "Siemens",
    "Deutsche Bank",
    "Goldman Sachs",
    "Airbus",
    "Nestlé",
    "Barclays",
    "the World Health Organization",
    "Stanford University",
    "the European Commission",
    "Amazon",
    "Volkswagen",
    "BNP Paribas",
    "Accenture",
    "IBM",
    "Oxford University",
    "Unilever",
    "Shell",
    "Pfizer",
    "the United Nations",
    "Harvard University",
    "Toyota",
    "Santander",
]
DOMAINS = [
    "example.com",
    "corp.example",
    "mail.example.org",
    "gmail.com",
    "outlook.com",
    "web.de",
    "gmx.net",
    "orange.fr",
    "libero.it",
    "telefonica.es",
    "acme-corp.io",
    "uni-heidelberg.de",
    "company.co.uk",
]
PHONE_REGIONS = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "CH", "AT", "BE", "IE", "IN", "AU"]
STREETS_EN = [
    "Baker",
    "Oak",
    "Maple",
    "Elm",
    "High",
    "Church",
    "Station",
    "Park",
    "Victoria",
    "King",
    "Queen",
    "Mill",
    "Pennsylvania",
    "Washington",
    "Lincoln",
    "Sunset",
    "Abbey",
    "Cedar",
    "Pine",
    "Lake",
]
STREET_TYPES_US = [
    "Street",
    "Avenue",
    "Road",
    "Boulevard",
    "Drive",
    "Lane",
    "Court",
    "Way",
    "Place",
    "St.",
    "Ave",
]
STREET_TYPES_UK = [
    "Street",
    "Road",
    "Lane",
    "Close",
    "Gardens",
    "Crescent",
    "Terrace",
    "Square",
    "Mews",
    "Way",
]
US_CITIES = [
    ("Springfield", "IL"),
    ("Austin", "TX"),
    ("Portland", "OR"),
    ("Denver", "CO"),
    ("Boston", "MA"),
    ("Seattle", "WA"),
    ("New York", "NY"),
    ("Washington", "DC"),
    ("San Jose", "CA"),
    ("Miami", "FL"),
]
UK_CITIES = ["London", "Manchester", "Leeds", "Bristol", "Glasgow", "Cardiff", "Oxford", "Cambridge"]
DE_STEMS = [
    "Haupt",
    "Bahnhof",
    "Goethe",
    "Schiller",
    "Linden",
    "Berg",
    "Garten",
    "Kirch",
    "Wald",
    "Rosen",
    "Friedrich",
    "Schul",
    "Mühlen",
    "Kant",
]
DE_TYPES = ["straße", "str.", "weg", "allee", "platz", "gasse"]
DE_CITIES = [
    ("10115", "Berlin"),
    ("80331", "München"),
    ("20095", "Hamburg"),
    ("50667", "Köln"),
    ("60311", "Frankfurt"),
    ("1010", "Wien"),
    ("8001", "Zürich"),
    ("70173", "Stuttgart"),
]
FR_STREETS = [
    "rue de la Paix",
    "avenue des Champs-Élysées",
    "boulevard Saint-Michel",
    "rue du Faubourg",
    "place d'Italie",
    "rue Victor Hugo",
    "avenue Jean Jaurès",
    "chemin des Vignes",
    "quai de la Tournelle",
    "rue de Rivoli",
]
FR_CITIES = [
    ("75002", "Paris"),
    ("69001", "Lyon"),
    ("13001", "Marseille"),
    ("31000", "Toulouse"),
    ("1000", "Bruxelles"),
    ("1204", "Genève"),
    ("33000", "Bordeaux"),
]
ES_STREETS = [
    "Calle Mayor",
    "Calle de Alcalá",
    "Avenida de la Constitución",
    "Paseo de Gracia",
    "Calle Serrano",
    "Plaza Mayor",
    "Carrer de Balmes",
    "Rua Augusta",
    "Avenida da Liberdade",
]
ES_CITIES = [
    ("28013", "Madrid"),
    ("08007", "Barcelona"),
    ("41001", "Sevilla"),
    ("46002", "Valencia"),
    ("1100", "Lisboa"),
]
IT_STREETS = [
    "Via Roma",
    "Via dei Condotti",
    "Piazza di Spagna",
    "Corso Vittorio Emanuele",
    "Via Garibaldi",
    "Viale Monza",
    "Via della Spiga",
    "Largo Argentina",
]
IT_CITIES = [
    ("00187", "Roma"),
    ("20121", "Milano"),
    ("80100", "Napoli"),
    ("10121", "Torino"),
    ("50122", "Firenze"),
]
NL_STEMS = ["Kalver", "Keizers", "Prinsen", "Heren", "Dam", "Leidse", "Rozen", "Molen", "Kerk", "Oranje"]
NL_TYPES = ["straat", "gracht", "laan", "weg", "plein", "kade"]
NL_CITIES = [
    ("1012 AB", "Amsterdam"),
    ("3011 AD", "Rotterdam"),
    ("3511 LX", "Utrecht"),
    ("2511 CV", "Den Haag"),
]
MONTHS = {
    "en": [
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
    ],
    "de": [
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ],
    "fr": [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ],
    "es": [
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ],
    "it": [
        "gennaio",
        "febbraio",
        "marzo",
        "aprile",
        "maggio",
        "giugno",
        "luglio",
        "agosto",
        "settembre",
        "ottobre",
        "novembre",
        "dicembre",
    ],
    "nl": [
        "januari",
        "februari",
        "maart",
        "april",
        "mei",
        "juni",
        "juli",
        "augustus",
        "september",
        "oktober",
        "november",
        "december",
    ],
}


@dataclass
class Values:
    """Value generators for every slot, drawing from one seeded random source."""

    rnd: random.Random

    def pick(self, items: Sequence[str]) -> str:
        return items[self.rnd.randrange(len(items))]

    def digits(self, n: int) -> str:
        return "".join(self.rnd.choice(string.digits) for _ in range(n))

    def person(self, lang: str) -> str:
        pool = lang if lang != "en" else self.pick(list(FIRST))
        if self.rnd.random() < 0.3:
            pool = "world"
        return f"{self.pick(FIRST[pool])} {self.pick(LAST[pool])}"

    def location(self, lang: str) -> str:
        if self.rnd.random() < 0.3:
            return self.pick(COUNTRIES)
        return self.pick(CITIES[lang if self.rnd.random() < 0.6 else self.pick(list(CITIES))])

    def organization(self, lang: str) -> str:
        return self.pick(ORGS)

    def email(self, lang: str) -> str:
        first, last = self.person(lang).split(" ", 1)
        local = self.pick(
            [f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}", f"{first}{self.digits(2)}"]
        )
        local = re.sub(r"[^a-z0-9._]", "", local.lower().replace(" ", "").translate(_ASCII))
        return f"{local}@{self.pick(DOMAINS)}"

    def phone(self, lang: str) -> str:
        if self.rnd.random() < 0.12:  # fictional NANP numbers, as in films and tests: (555) 123-4567
            return self.pick(
                [
                    f"(555) {self.digits(3)}-{self.digits(4)}",
                    f"555-{self.digits(3)}-{self.digits(4)}",
                    f"+1 (555) {self.digits(3)}-{self.digits(4)}",
                ]
            )
        region = self.pick(
            {
                "de": ["DE", "AT", "CH"],
                "fr": ["FR", "BE", "CH"],
                "es": ["ES"],
                "it": ["IT"],
                "nl": ["NL", "BE"],
            }.get(lang, PHONE_REGIONS)
        )
        number = self._valid_number(region)
        style = self.rnd.random()
        if style < 0.45:
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        if style < 0.85:
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def _valid_number(self, region: str) -> phonenumbers.PhoneNumber:
        kind = self.pick([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
        example = phonenumbers.example_number_for_type(region, kind)
        national = str(example.national_number)
        for _ in range(200):
            keep = max(2, len(national) - 6)
            candidate = phonenumbers.parse(
                f"+{example.country_code}{national[:keep]}{self.digits(len(national) - keep)}"
            )
            if phonenumbers.is_valid_number(candidate):
                return candidate
        return example

    def credit_card(self, lang: str) -> str:
        prefix, length, groups = self.pick([("4", 16, (4, 4, 4, 4)), ("51", 16, (4, 4, 4, 4)), ("55", 16, (4, 4, 4, 4)),
                                            ("2221", 16, (4, 4, 4, 4)), ("37", 15, (4, 6, 5)), ("34", 15, (4, 6, 5)),
                                            ("6011", 16, (4, 4, 4, 4))])  # fmt: skip
        body = prefix + self.digits(length - len(prefix) - 1)
        number = body + _luhn_digit(body)
        sep = self.pick([" ", "-", ""])
        out, pos = [], 0
        for g in groups:
            out.append(number[pos : pos + g])
            pos += g
        return sep.join(out)

    def iban(self, lang: str) -> str:
        country, bban = self.pick([
            ("DE", self.digits(18)), ("GB", "NWBK" + self.digits(14)), ("FR", self.digits(23)),
            ("ES", self.digits(20)), ("IT", "X" + self.digits(22)), ("NL", "ABNA" + self.digits(10)),
            ("CH", self.digits(17)), ("AT", self.digits(16)), ("BE", self.digits(12)),
        ])  # fmt: skip
        check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
        iban = f"{country}{check:02d}{bban}"
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if self.rnd.random() < 0.6 else iban

    def api_key(self, lang: str) -> str:
        alnum = string.ascii_letters + string.digits
        r = lambda n, chars=alnum: "".join(self.rnd.choice(chars) for _ in range(n))  # noqa: E731
        return self.pick([
            f"sk-{r(48)}", f"sk-proj-{r(40)}", f"AKIA{r(16, string.ascii_uppercase + string.digits)}",
            f"ghp_{r(36)}", f"xoxb-{self.digits(12)}-{self.digits(12)}-{r(24)}", f"AIza{r(35)}",
            f"sk_live_{r(24)}", f"hf_{r(34)}", f"glpat-{r(20)}",
            f"eyJ{r(20)}.eyJ{r(30)}.{r(43)}",
        ])  # fmt: skip

    def ip_address(self, lang: str) -> str:
        if self.rnd.random() < 0.25:
            groups = [f"{self.rnd.randrange(65536):x}" for _ in range(8)]
            return ":".join(groups) if self.rnd.random() < 0.5 else f"2001:db8::{groups[0]}:{groups[1]}"
        return ".".join(str(self.rnd.randrange(1, 255)) for _ in range(4))

    def us_ssn(self, lang: str) -> str:
        area = self.rnd.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{self.rnd.randrange(1, 100):02d}-{self.rnd.randrange(1, 10000):04d}"

    def url(self, lang: str) -> str:
        host = self.pick(
            [
                "shop.example.com",
                "internal-wiki:8080",
                "api.acme-corp.io",
                "docs.example.org",
                "intranet.corp.example",
                "portal.example.de",
                "10.0.4.7:3000",
            ]
        )
        path = "/".join(
            self.pick(["orders", "users", "tickets", "reset", "v2", "files", "invoice"]) for _ in range(2)
        )
        query = self.pick(["", f"?id={self.digits(6)}", f"?token={self.digits(8)}&lang={lang}"])
        if self.rnd.random() < 0.2:
            return f"www.{self.pick(['example', 'acme-shop', 'my-blog'])}.{self.pick(['com', 'de', 'fr'])}/{path}"
        return f"{self.pick(['https', 'http'])}://{host}/{path}{query}"

    def mac_address(self, lang: str) -> str:
        octets = [f"{self.rnd.randrange(256):02X}" for _ in range(6)]
        style = self.rnd.random()
        if style < 0.4:
            return ":".join(octets)
        if style < 0.7:
            return "-".join(octets).lower()
        joined = "".join(octets).lower()
        return ".".join(joined[i : i + 4] for i in range(0, 12, 4))

    def date_of_birth(self, lang: str) -> str:
        y, m, d = self.rnd.randrange(1940, 2006), self.rnd.randrange(1, 13), self.rnd.randrange(1, 29)
        month = MONTHS[lang][m - 1]
        style = self.rnd.random()
        if lang == "en":
            return self.pick(
                [f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}", f"{month} {d}, {y}", f"{d} {month} {y}"]
            )
        if style < 0.5:
            return f"{d:02d}.{m:02d}.{y}" if lang in ("de", "nl") else f"{d:02d}/{m:02d}/{y}"
        return (
            f"{d}. {month} {y}"
            if lang == "de"
            else f"{d} {'de ' if lang == 'es' else ''}{month} {'de ' if lang == 'es' else ''}{y}"
        )

    def street_address(self, lang: str) -> str:
        style = lang if lang != "en" else self.pick(["us", "us", "uk", "uk"])
        with_tail = self.rnd.random() < 0.6
        return getattr(self, f"_address_{style}")(with_tail)

    def _address_us(self, tail: bool) -> str:
        street = f"{self.rnd.randrange(1, 9999)} {self.pick(STREETS_EN)} {self.pick(STREET_TYPES_US)}"
        if self.rnd.random() < 0.2:
            street += f", Apt {self.rnd.randrange(1, 40)}{self.pick(['', 'B'])}"
        city, state = self.pick(US_CITIES)
        return f"{street}, {city}, {state} {self.digits(5)}" if tail else street

    def _address_uk(self, tail: bool) -> str:
        street = f"{self.rnd.randrange(1, 300)}{self.pick(['', '', 'A', 'B'])} {self.pick(STREETS_EN)} {self.pick(STREET_TYPES_UK)}"
        postcode = f"{self.pick(['NW', 'SW', 'E', 'M', 'LS', 'BS', 'EC'])}{self.rnd.randrange(1, 20)} {self.rnd.randrange(1, 10)}{self.pick(['AA', 'XE', 'BT', 'QD'])}"
        return f"{street}, {self.pick(UK_CITIES)} {postcode}" if tail else street

    def _address_de(self, tail: bool) -> str:
        street = f"{self.pick(DE_STEMS)}{self.pick(DE_TYPES)} {self.rnd.randrange(1, 200)}{self.pick(['', '', 'a', 'b'])}"
        plz, city = self.pick(DE_CITIES)
        return f"{street}, {plz} {city}" if tail else street

    def _address_fr(self, tail: bool) -> str:
        street = f"{self.rnd.randrange(1, 150)}{self.pick(['', '', ' bis'])} {self.pick(FR_STREETS)}"
        cp, city = self.pick(FR_CITIES)
        return f"{street}, {cp} {city}" if tail else street

    def _address_es(self, tail: bool) -> str:
        street = f"{self.pick(ES_STREETS)}{self.pick([' ', ', '])}{self.rnd.randrange(1, 200)}"
        cp, city = self.pick(ES_CITIES)
        return f"{street}, {cp} {city}" if tail else street

    def _address_it(self, tail: bool) -> str:
        street = f"{self.pick(IT_STREETS)}{self.pick([' ', ', '])}{self.rnd.randrange(1, 200)}"
        cap, city = self.pick(IT_CITIES)
        return f"{street}, {cap} {city}" if tail else street

    def _address_nl(self, tail: bool) -> str:
        street = f"{self.pick(NL_STEMS)}{self.pick(NL_TYPES)} {self.rnd.randrange(1, 400)}"
        pc, city = self.pick(NL_CITIES)
        return f"{street}, {pc} {city}" if tail else street

    # unlabelled look-alikes: dates that are not birth dates, versions, times, amounts, references
    def noise(self, lang: str) -> str:
        y, m, d = self.rnd.randrange(2019, 2027), self.rnd.randrange(1, 13), self.rnd.randrange(1, 29)
        return self.pick([f"{y}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}", f"{m:02d}/{d:02d}/{y}", f"{y}-{y + 1}",
                          f"v{self.rnd.randrange(1, 5)}.{self.rnd.randrange(20)}.{self.rnd.randrange(10)}",
                          f"{self.rnd.randrange(7, 20)}:{self.pick(['00', '15', '30', '45'])}",
                          f"order {self.digits(6)}", f"{self.rnd.randrange(10, 999)}.{self.digits(2)} EUR",
                          f"ticket #{self.digits(5)}", f"{self.rnd.randrange(2, 64)} GB", f"port {self.rnd.randrange(1024, 65535)}",
                          f"Spring {y}", f"{self.rnd.randrange(1, 99)}%"])  # fmt: skip


_ASCII = str.maketrans("äöüßéèêàçñíóúáåæø", "aouseeeacniouaaao")


def _luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        n = int(c)
        if i % 2 == 0:
            n *= 2
            n -= 9 if n > 9 else 0
        total += n
    return str((10 - total % 10) % 10)


# --- templates: {Slot} or {Slot2} (a second value of the class); a repeated slot is the same value --------------

SLOT_CLASS = {
    "Person": "Person", "Location": "Location", "Organization": "Organization", "Email": "Email",
    "PhoneNumber": "PhoneNumber", "CreditCard": "CreditCard", "IBAN": "IBAN", "APIKey": "APIKey",
    "IPAddress": "IPAddress", "USSocialSecurityNumber": "USSocialSecurityNumber", "URL": "URL",
    "StreetAddress": "StreetAddress", "DateOfBirth": "DateOfBirth", "MACAddress": "MACAddress",
}  # fmt: skip
GENERATOR = {
    "Person": "person", "Location": "location", "Organization": "organization", "Email": "email",
    "PhoneNumber": "phone", "CreditCard": "credit_card", "IBAN": "iban", "APIKey": "api_key",
    "IPAddress": "ip_address", "USSocialSecurityNumber": "us_ssn", "URL": "url", "StreetAddress": "street_address",
    "DateOfBirth": "date_of_birth", "MACAddress": "mac_address", "Noise": "noise",
}  # fmt: skip

TEMPLATES: dict[str, list[str]] = {
    "en": [
        "Hi, this is {Person}. Please call me back at {PhoneNumber} before {Noise}.",
        "Customer {Person} ({Email}) reported that the invoice from {Noise} was wrong.",
        "Ship the order to {Person}, {StreetAddress}.",
        "My name is {Person} and I live at {StreetAddress}.",
        "{Person} moved from {Location} to {Location2} last year and now works for {Organization}.",
        "Can you book a table for {Person} in {Location} on {Noise}? Her number is {PhoneNumber}.",
        "Please charge card {CreditCard} for the renewal; the cardholder is {Person}.",
        "Transfer 250 EUR to IBAN {IBAN} (account holder {Person}) by {Noise}.",
        "The deploy failed: the service at {IPAddress} rejected key {APIKey}.",
        "export OPENAI_API_KEY={APIKey}",
        "Use the token {APIKey} for the staging cluster, not the production one.",
        'Config: api_key="{APIKey}" host={IPAddress} port=8443',
        "Patient {Person}, date of birth {DateOfBirth}, was admitted to the clinic in {Location}.",
        "{Person} was born on {DateOfBirth} in {Location}.",
        "DOB: {DateOfBirth}. SSN: {USSocialSecurityNumber}. Applicant: {Person}.",
        "Her social security number is {USSocialSecurityNumber} and she was born {DateOfBirth}.",
        "The laptop with MAC address {MACAddress} was last seen on {IPAddress}.",
        "Device {MACAddress} keeps dropping off the Wi-Fi since {Noise}.",
        "Reset your password here: {URL}",
        "The report is at {URL} and the backup at {URL2}.",
        "Forward this to {Email} and cc {Email2}, thanks!",
        "From: {Person} <{Email}>\nTo: support\nSubject: refund for {Noise}",
        "{Person} from {Organization} asked whether the meeting on {Noise} can move to {Location}.",
        "I spoke with {Person} at {Organization}; they will send the contract to {StreetAddress}.",
        "Reach {Person} on {PhoneNumber} or at {Email}.",
        "Contact: {Person}, phone {PhoneNumber}, mobile {PhoneNumber2}.",
        "{Person} and {Person2} both work at {Organization} in {Location}.",
        "Thanks {Person}! I forwarded your question to {Person2}, who leads the {Location} office.",
        "Our new office is at {StreetAddress}; the old one in {Location} closes on {Noise}.",
        "Flight for {Person} from {Location} to {Location2}, booking {Noise}.",
        "The cardholder {Person} disputes a charge of {Noise} on card ending in {CreditCard}.",
        "Invoice for {Organization}, {StreetAddress}, payable to {IBAN}.",
        "Call {PhoneNumber} if the build on {IPAddress} is still red at {Noise}.",
        "Dr. {Person} will see you on {Noise}; questions go to {PhoneNumber}.",
        "Please update the shipping address of {Person} to {StreetAddress} and the phone to {PhoneNumber}.",
        "{Person} joined {Organization} in {Noise} after ten years at {Organization2}.",
        "Send the NDA to {Person} ({Email}), {Organization}, {StreetAddress}.",
        "Weather in {Location} tomorrow? I'm flying there with {Person}.",
        "The webhook {URL} returned 500 for client {IPAddress}.",
        "Login from {IPAddress} for user {Email} at {Noise}.",
        "Employee record: {Person}, born {DateOfBirth}, SSN {USSocialSecurityNumber}, {StreetAddress}.",
        "Router {MACAddress} at {IPAddress} needs a firmware update to {Noise}.",
        "The quarterly numbers from {Organization} look fine; {Person} will present them in {Location}.",
        "Hello, I am {Person}, a nurse from {Location}. You can reach me at {PhoneNumber}.",
        "Meeting notes: {Person} (chair), {Person2}, {Person3}. Next meeting {Noise}.",
        "Wire the deposit to {IBAN}; reference {Noise}.",
        "New card for {Person}: {CreditCard}, expires 09/28.",
        "Mr. {Person} complained that his parcel to {StreetAddress} never arrived.",
        "Ms. {Person} lives in {Location} and prefers e-mail: {Email}.",
        "{Person}'s phone number is {PhoneNumber}.",
        "The API key {APIKey} leaked in a public repository on {Noise}.",
        "Authorization: Bearer {APIKey}",
        "Please remind {Person} that the deadline is {Noise}.",
        "Visit {URL} for the {Location} schedule.",
        "Our data centre in {Location} hosts {IPAddress} and {IPAddress2}.",
        "{Person}, who was born on {DateOfBirth}, applied for the job at {Organization}.",
        "Ask {Person} in {Location} about the {Noise} release.",
        "{Person} called from {PhoneNumber} about the package to {StreetAddress}.",
    ],
    "de": [
        "Hallo, hier ist {Person}. Bitte rufen Sie mich unter {PhoneNumber} zurück.",
        "Bitte liefern Sie an {Person}, {StreetAddress}.",
        "Herr {Person} wohnt in der {StreetAddress} und ist unter {PhoneNumber} erreichbar.",
        "Überweisen Sie den Betrag bis {Noise} auf das Konto {IBAN}.",
        "Geboren am {DateOfBirth} in {Location}, Telefon {PhoneNumber}.",
        "Die Rechnung vom {Noise} geht an {Email}.",
        "Tel.: {PhoneNumber}, Fax: {PhoneNumber2}",
        "Unsere neue Adresse: {StreetAddress}.",
        "Das Gerät {MACAddress} hat die IP {IPAddress}.",
    ],
    "fr": [
        "Bonjour, je suis {Person}, vous pouvez me joindre au {PhoneNumber}.",
        "Merci d'envoyer le colis à {Person}, {StreetAddress}.",
        "Mon adresse est {StreetAddress} et mon téléphone {PhoneNumber}.",
        "Née le {DateOfBirth} à {Location}.",
        "Virement sur le compte {IBAN} avant le {Noise}.",
        "Écrivez-moi à {Email} ou appelez le {PhoneNumber}.",
        "Le rendez-vous du {Noise} est confirmé au {StreetAddress}.",
    ],
    "es": [
        "Hola, soy {Person}, mi teléfono es {PhoneNumber}.",
        "Envíe el pedido a {StreetAddress}, a la atención de {Person}.",
        "Fecha de nacimiento: {DateOfBirth}. Correo: {Email}.",
        "Vivo en {StreetAddress} desde {Noise}.",
        "Transferencia a la cuenta {IBAN}, referencia {Noise}.",
        "Llámame al {PhoneNumber} o escribe a {Email}.",
    ],
    "it": [
        "Buongiorno, sono {Person}, il mio numero è {PhoneNumber}.",
        "Spedire a {Person}, {StreetAddress}.",
        "Nato il {DateOfBirth} a {Location}.",
        "Il bonifico va sul conto {IBAN} entro il {Noise}.",
        "Abito in {StreetAddress}; telefono {PhoneNumber}.",
        "Scrivimi a {Email}.",
    ],
    "nl": [
        "Hallo, met {Person}. Bel me terug op {PhoneNumber}.",
        "Stuur het pakket naar {Person}, {StreetAddress}.",
        "Mijn adres is {StreetAddress}, telefoon {PhoneNumber}.",
        "Geboren op {DateOfBirth} in {Location}.",
        "Maak het bedrag over naar {IBAN}.",
        "Mail naar {Email} voor {Noise}.",
    ],
}
_SLOT = re.compile(r"\{([A-Za-z]+?)(\d?)\}")


def fill(template: str, lang: str, values: Values) -> dict[str, Any]:
    """One record: the template with every slot filled, and the spans of the labelled ones."""
    chosen: dict[str, str] = {}
    text, spans, pos = [], [], 0
    length = 0
    for m in _SLOT.finditer(template):
        text.append(template[pos : m.start()])
        length += m.start() - pos
        slot = m.group(0)
        if slot not in chosen:
            chosen[slot] = getattr(values, GENERATOR[m[1]])(lang)
        value = chosen[slot]
        if m[1] in SLOT_CLASS:
            spans.append({"class": SLOT_CLASS[m[1]], "start": length, "end": length + len(value)})
        text.append(value)
        length += len(value)
        pos = m.end()
    text.append(template[pos:])
    return {"lang": lang, "text": "".join(text), "spans": spans}


def generate(n: int = RECORDS, seed: int = SEED) -> list[dict[str, Any]]:
    """``n`` records: every template at least once, then templates drawn at random (English twice as often)."""
    rnd = random.Random(seed)
    values = Values(rnd)
    pairs = [(lang, t) for lang, ts in TEMPLATES.items() for t in ts]
    weights = [2 if lang == "en" else 1 for lang, _ in pairs]
    chosen = pairs + rnd.choices(pairs, weights=weights, k=max(0, n - len(pairs)))
    return [{"id": i, **fill(t, lang, values)} for i, (lang, t) in enumerate(chosen[:n])]


def load(path: Path = CORPUS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- scoring ----------------------------------------------------------------------------------------------------


@dataclass
class ClassScore:
    labelled: int = 0  #: labelled values of the class
    caught: int = 0  #: labelled values wholly inside a redacted span of the same class
    hidden: int = 0  #: labelled values wholly redacted, whatever the class of the span (what privacy needs)
    predicted: int = 0  #: redacted spans of the class
    correct: int = 0  #: of those, the ones that overlap a labelled value of the class

    @property
    def recall(self) -> float:
        return self.caught / self.labelled if self.labelled else 1.0

    @property
    def hidden_rate(self) -> float:
        return self.hidden / self.labelled if self.labelled else 1.0

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0


def score(
    records: Iterable[dict[str, Any]], spans_of: Callable[[str], Sequence[Any]]
) -> dict[str, ClassScore]:
    """Per class: recall (same class, whole value), redacted (any class), precision (overlap, same class).

    ``spans_of(text)`` returns the spans the sanitiser redacts (``start``, ``end``, ``cls``).
    """
    scores: dict[str, ClassScore] = {}
    for rec in records:
        predicted = spans_of(rec["text"])
        for gold in rec["spans"]:
            s = scores.setdefault(gold["class"], ClassScore())
            s.labelled += 1
            inside = [p for p in predicted if p.start <= gold["start"] and gold["end"] <= p.end]
            s.caught += any(p.cls == gold["class"] for p in inside)
            covered = sum(
                min(p.end, gold["end"]) - max(p.start, gold["start"])
                for p in predicted
                if p.start < gold["end"] and gold["start"] < p.end
            )
            s.hidden += covered >= gold["end"] - gold["start"]
        for p in predicted:
            s = scores.setdefault(p.cls, ClassScore())
            s.predicted += 1
            s.correct += any(
                g["class"] == p.cls and g["start"] < p.end and p.start < g["end"] for g in rec["spans"]
            )
    return scores


def redacted_spans(sanitizer: Any) -> Callable[[str], Sequence[Any]]:
    """What ``sanitizer`` redacts in a text: its findings, resolved as ``sanitize_text`` resolves them."""
    from slm_operator.sanitize.spans import resolve

    return lambda text: resolve(text, sanitizer.find([text])[0])


def table(scores: dict[str, ClassScore]) -> str:
    from slm_operator.sanitize import CLASS_NAMES

    rows = [
        "| class | labelled | recall | redacted (any class) | precision |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for cls in CLASS_NAMES:
        s = scores.get(cls, ClassScore())
        rows.append(
            f"| {cls} | {s.labelled} | {s.recall:.3f} | {s.hidden_rate:.3f} | {s.precision:.3f} ({s.predicted - s.correct} false) |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["generate"]:
        records = generate()
        CORPUS.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
        classes = {s["class"] for r in records for s in r["spans"]}
        print(f"wrote {len(records)} records, {len(classes)} classes, to {CORPUS}")
        return 0
    if argv[:1] == ["score"]:
        from slm_operator.sanitize import CLASS_NAMES, DEFAULT_NER_MODEL, Sanitizer

        model = argv[1] if len(argv) > 1 else DEFAULT_NER_MODEL
        started = time.perf_counter()
        sanitizer = Sanitizer(CLASS_NAMES, ner_model=model)
        loaded = time.perf_counter() - started
        records = load()
        started = time.perf_counter()
        for rec in records:
            sanitizer.sanitize_text(rec["text"])
        per_second = len(records) / (time.perf_counter() - started)
        print(
            f"NER model {model}: Sanitizer built in {loaded:.2f} s; {per_second:.0f} records/s (one CPU thread)"
        )
        print(table(score(records, redacted_spans(sanitizer))))
        return 0
    print("usage: python -m tests.pii_corpus generate | score [NER_MODEL]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
