"""The patterns behind the recognisers Presidio does not ship, as plain strings (no Presidio import).

Presidio compiles them with the ``regex`` module, which allows the variable-length look-behinds used for context
("born on", "phone:", "api_key="), case-sensitively (``recognizers.CASE_SENSITIVE``): street and month names are
recognised by their capitals, and ``(?i:...)`` marks the parts that ignore case. Each list holds
``(name, pattern, score)``; a score at or above ``recognizers.SCORE_THRESHOLD`` means "redact without more
evidence". ``docs/sanitization.md`` lists the formats each one reads.
"""

from __future__ import annotations

import re

#: Regions whose national formats libphonenumber reads (international "+CC ..." numbers match in any region).
#: Not LU: its numbering plan has four-digit numbers, and every year ("2024") would be one.
PHONE_REGIONS = ("US", "CA", "GB", "IE", "DE", "AT", "CH", "FR", "BE", "NL", "ES", "PT", "IT", "IN", "AU")

#: spaCy NER labels (OntoNotes for Explosion's English pipelines) -> Presidio entity types.
SPACY_LABELS = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
}

# --- phone numbers libphonenumber does not validate (it validates real numbering plans) ------------------------

_PHONE_WORDS = (
    r"phone|tel|telephone|call|ring|mobile|cell|fax|whatsapp|sms|text|contact|reach|"
    r"telefon|telefonnummer|handy|mobil|rufnummer|anrufen|téléphone|portable|tél|appeler|"
    r"teléfono|móvil|llamar|telefono|cellulare|chiamare|telefoon|mobiel|bellen"
)
PHONE = (
    # North-American formats, fictional 555 numbers included: (555) 123-4567, 555-123-4567, +1 555.123.4567
    ("NANP parentheses", r"(?<![\w+])(?:\+?1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}(?!\w)", 0.6),
    ("NANP groups", r"(?<![\w.+/-])(?:\+?1[ .-])?\d{3}[.-]\d{3}[.-]\d{4}(?![\w/-])", 0.6),
    # Any digit run of a phone's shape right after a phone word: "call 0176 1234 567", "Tel.: +49 (0)30 1234-56"
    (
        "after a phone word",
        rf"(?<=(?i:\b(?:{_PHONE_WORDS}))\b[^\d\n]{{0,24}})\+?\(?\d[\d ()./-]{{5,}}\d(?![\w/-])",
        0.6,
    ),
)

# --- credit cards: Presidio's pattern plus Mastercard's 2-series; Presidio's Luhn check decides -----------------

CREDIT_CARD = (
    r"\b(?!1\d{12}(?!\d))(?:4\d{3}|5[0-5]\d{2}|2[2-7]\d{2}|6\d{3}|1\d{3}|3\d{3})"
    r"[- ]?\d{3,4}[- ]?\d{3,4}[- ]?\d{3,5}\b"
)

# --- API keys and secrets ---------------------------------------------------------------------------------------

_SECRET_NAMES = (
    r"api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|secret(?:[_-]?(?:access[_-]?)?key)?|client[_-]?secret|"
    r"(?:auth|access|refresh|bearer|api|session)[_-]?token|token|password|passwd|pwd|passphrase"
)
API_KEYS = (
    ("OpenAI/Anthropic", r"\bsk-(?:proj-|ant-(?:api\d\d-)?|live-|test-|svcacct-)?[A-Za-z0-9_-]{20,}", 0.8),
    ("AWS access key id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b", 0.8),
    ("GitHub", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b", 0.8),
    ("GitLab", r"\bglpat-[A-Za-z0-9_-]{20,}", 0.8),
    ("Slack", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", 0.8),
    ("Google", r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])", 0.8),
    ("Stripe", r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.8),
    ("Hugging Face", r"\bhf_[A-Za-z0-9]{30,}\b", 0.8),
    ("npm", r"\bnpm_[A-Za-z0-9]{36}\b", 0.8),
    ("JSON Web Token", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0.8),
    ("Bearer", r"(?<=\b(?i:bearer)\s+)[A-Za-z0-9._~+/-]{16,}=*", 0.8),
    # the value of `api_key=...`, `"password": "..."`, `token: ...` (the name stays, the value goes)
    ("assigned secret", rf"""(?<=(?i:{_SECRET_NAMES})["']?\s*[:=]\s*["']?)[^\s"'`,;]{{8,}}""", 0.7),
)

# --- URLs: any scheme URL and www. hosts (Presidio's own needs a listed top-level domain, so misses hosts) -----

_URL_TAIL = r"[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"
URLS = (
    ("scheme URL", rf"(?i)\b(?:https?|ftp|wss?)://{_URL_TAIL}", 0.6),
    ("www host", rf"(?i)\bwww\d{{0,3}}\.[a-z0-9-]+(?:\.[a-z0-9-]+)+(?:[/?#]{_URL_TAIL})?", 0.6),
)

# --- street addresses -------------------------------------------------------------------------------------------

_CAP = r"[A-ZÀ-ÖØ-Þ][\w'\u2019-]*"  # a capitalised word (no dot: "Berlin." ends the address)
_NUM = r"\d{1,5}[A-Za-z]?(?:[-/]\d{1,5}[A-Za-z]?)?"  # 221B, 12a, 12-14, 3/5
_EN_TYPE = (
    r"(?:Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Lane|Ln\.?|Boulevard|Blvd\.?|Drive|Dr\.?|Court|Ct\.?|Place|Pl\.?|"
    r"Square|Sq\.?|Terrace|Way|Parkway|Pkwy\.?|Highway|Hwy\.?|Crescent|Close|Gardens|Row|Mews|Walk|Grove|"
    r"Circle|Trail|Alley|Plaza)"
)
_UNIT = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|\#)\s*\w{1,5}"
# no "ring": "Spring 2024" and "Offering 3" are not addresses
_DE_TYPE = r"(?:straße|strasse|str\.|gasse|weg|allee|platz|damm|ufer|chaussee|steig|pfad|markt|zeile)"
_DE_WORD_TYPE = r"(?:Straße|Strasse|Str\.|Gasse|Weg|Allee|Platz|Ring|Damm|Ufer|Chaussee|Steig|Pfad|Markt)"
_NL_TYPE = r"(?:straat|laan|weg|plein|gracht|kade|singel|dijk|steeg|markt|hof)"
_FR_TYPE = r"(?i:rue|avenue|av\.|boulevard|bd|place|chemin|allée|impasse|quai|route|cours|passage|square)"
_FR_LINK = r"(?:(?:de la|de l[\u2019']|des|du|de|la|le|les|d[\u2019']|l[\u2019'])\s*)"
_LATIN_TYPE = (
    r"(?:Calle|C/|Avenida|Avda\.|Plaza|Pza\.|Paseo|Camino|Carrer|Rambla|Ronda|Travesía|Glorieta|"
    r"Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Rua|Travessa|Praça)"
)
_LATIN_LINK = (
    r"(?:(?:de la|de los|de las|del|de|da|do|dos|das|della|dello|delle|dei|degli|di|la|el|d[\u2019'])\s*)"
)
# City and postcode after the street line: US "Springfield, IL 62704", UK "London NW1 6XE",
# continental "10115 Berlin", "1012 AB Amsterdam", "D-80331 München".
_TAIL = (
    rf"(?:,?\s+(?:(?:{_CAP}\s){{0,2}}{_CAP},\s+[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?"
    rf"|(?:{_CAP}\s+){{0,2}}[A-Z]{{1,2}}\d[A-Z\d]?\s?\d[A-Z]{{2}}\b"
    rf"|(?:[A-Z]{{1,2}}-)?\d{{4,5}}(?:\s?[A-Z]{{2}})?\s+{_CAP}(?:-{_CAP}|\s{_CAP}(?=[,.;:!?)\n]|$))?))?"
)
STREET_ADDRESSES = (
    (
        "English",
        rf"(?:(?:Flat|Apt\.?|Apartment|Suite|Unit)\s+\w{{1,5}},?\s+)?\b{_NUM}\s+"
        rf"(?:(?:{_CAP}|\d{{1,3}}(?:st|nd|rd|th))\s+){{1,4}}{_EN_TYPE}(?!\w)"
        rf"(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?(?:,?\s+{_UNIT})?{_TAIL}",
        0.7,
    ),
    (
        "German one word",
        rf"\b(?:{_CAP}[ -])?[A-ZÄÖÜ][a-zäöüß]*(?:-[A-ZÄÖÜ][a-zäöüß]*)*-?{_DE_TYPE}\s+{_NUM}\b{_TAIL}",
        0.7,
    ),
    ("German two words", rf"\b{_CAP}(?:[ -]{_CAP}){{0,2}}[ -]{_DE_WORD_TYPE}\s+{_NUM}\b{_TAIL}", 0.7),
    ("Dutch", rf"\b[A-Z][a-z]+(?:-[A-Z][a-z]+)*{_NL_TYPE}\s+{_NUM}\b{_TAIL}", 0.7),
    (
        "French",
        rf"\b{_NUM}(?:\s?(?:bis|ter))?,?\s+{_FR_TYPE}\s+{_FR_LINK}*{_CAP}(?:[\s-]{_FR_LINK}*{_CAP}){{0,3}}{_TAIL}",
        0.7,
    ),
    (
        "Spanish, Italian, Portuguese",
        rf"\b{_LATIN_TYPE}\s+{_LATIN_LINK}*{_CAP}(?:\s+{_LATIN_LINK}*{_CAP}){{0,3}},?\s+(?:n[º°o.]\s*)?"
        rf"\d{{1,4}}[A-Za-z]?\b{_TAIL}",
        0.7,
    ),
)

# --- persons the NER model may miss or call an organisation: a name after a title or an introduction ---------

_NAME_WORD = r"[A-ZÀ-ÖØ-Þ][a-zß-ÿ'\u2019]+(?:-[A-ZÀ-ÖØ-Þ][a-zß-ÿ]+)?"
_PARTICLE = r"(?:van|von|de|der|den|del|della|di|da|du|dos|das|le|la|ten|ter|zu|bin|ibn|al|el|y)"
#: One to four capitalised words, with the particles of Dutch, German, French, Spanish, Italian... names.
NAME = rf"{_NAME_WORD}(?:\s+(?:{_PARTICLE}\s+){{0,2}}{_NAME_WORD}){{0,3}}"
_TITLE = (
    r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Herr|Frau|Monsieur|Madame|Mademoiselle|Mme|Mlle|Señor|Señora|"
    r"Sr|Sra|Srta|Signor|Signora|Sig|Dott|Dhr|Mevr|Mevrouw|Meneer)\.?"
)
_INTRODUCTION = (
    r"(?i:my name is|my name's|i am|i'm|this is|ich bin|ich heiße|mein name ist|hier ist|je suis|"
    r"je m'appelle|moi c'est|soy|me llamo|mi nombre es|sono|mi chiamo|ik ben|mijn naam is|hier is|met)"
)
_ROLE = (
    r"(?i:patient|customer|client|applicant|employee|candidate|cardholder|card holder|account holder|attn\.?|"
    r"c/o|dear|hi|hello|thanks|thank you|regards|sincerely|from:|cc:|kunde|kundin|cliente|paziente|klant|"
    r"a la atención de|à l'attention de)"
)
PERSON_CUES = (
    ("name after a title", rf"(?<=\b{_TITLE}\s+){NAME}", 0.9),
    (
        "name after an introduction or a role",
        rf"(?<=\b(?:{_INTRODUCTION}|{_ROLE})(?:\s+is|:|,)?\s+){NAME}",
        0.9,
    ),
)

# --- dates of birth: a date after a birth word ------------------------------------------------------------------

_MONTH = (
    r"(?i:January|February|March|April|May|June|July|August|September|October|November|December|"
    r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec|"
    r"Januar|Jänner|Februar|März|Mai|Juni|Juli|Oktober|Dezember|"
    r"janvier|février|mars|avril|juin|juillet|août|septembre|octobre|novembre|décembre|"
    r"enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre|"
    r"gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre|"
    r"januari|februari|maart|mei|augustus)\.?"
)
_DATE = (
    rf"(?:\d{{4}}-\d{{1,2}}-\d{{1,2}}|\d{{1,2}}[./-]\d{{1,2}}[./-](?:\d{{4}}|\d{{2}})"
    rf"|\d{{1,2}}(?:st|nd|rd|th|er|º)?\.?\s+(?:de\s+)?{_MONTH}\s+(?:de\s+)?\d{{4}}"
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})(?!\d)"
)
_BIRTH_WORDS = (
    r"born|birth|birthday|dob|d\.o\.b|geboren|geb|geburtsdatum|geburtstag|né|née|naissance|"
    r"nacido|nacida|nacimiento|nato|nata|nascita|geboortedatum"
)
DATES_OF_BIRTH = (
    ("date after a birth word", rf"(?<=(?i:\b(?:{_BIRTH_WORDS}))\b[^\n\d]{{0,30}}){_DATE}", 0.8),
)

# --- checks shared by the recognisers (stdlib re: these run on matched text only) -------------------------------

#: The e-mail's domain ends in a top-level domain of letters (or an IDN's punycode).
EMAIL_TLD = re.compile(r"\.(?:[^\W\d_]{2,}|xn--[\w-]+)$")
_NUMERIC_DATE = re.compile(
    r"(?P<y>\d{4})[-./](?P<m>\d{1,2})[-./](?P<d>\d{1,2})"
    r"|(?P<a>\d{1,2})[-./](?P<b>\d{1,2})[-./](?P<year>\d{4}|\d{2})"
)
_DATE_INSIDE = re.compile(
    r"(?<![\d./-])(?:(?P<y>\d{4})[-./](?P<m>\d{1,2})[-./](?P<d>\d{1,2})"
    r"|(?P<a>\d{1,2})[-./](?P<b>\d{1,2})[-./](?P<year>\d{4}))(?![\d./-])"
)
_YEAR_RANGE = re.compile(r"(?:19|20)\d\d\s?[-\u2013/]\s?(?:(?:19|20)\d\d|\d\d)")


def _is_date(m: re.Match[str]) -> bool:
    if m["y"]:
        return 1 <= int(m["m"]) <= 12 and 1 <= int(m["d"]) <= 31
    a, b = int(m["a"]), int(m["b"])
    return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)


def looks_like_date(text: str) -> bool:
    """``2024-03-15``, ``15.03.2024``, ``03/15/24``, ``2023-2024``: a date or a year range, never a phone number.

    A longer digit run that holds a date with a four-digit year (``12/05/2024 10``) is one too; a two-digit year
    only counts when it is the whole text (``06.12.34.56.78`` is a French phone number).
    """
    s = text.strip(" ()")
    if _YEAR_RANGE.fullmatch(s):
        return True
    whole = _NUMERIC_DATE.fullmatch(s)
    if whole is not None:
        return _is_date(whole)
    return any(_is_date(m) for m in _DATE_INSIDE.finditer(s))


#: The fewest digits of a phone number the sanitiser redacts (shorter ones are extensions and service codes).
PHONE_MIN_DIGITS = 7


def phone_shaped(text: str) -> bool:
    """Seven digits or more and not a date: what a phone-number candidate must be to count as one."""
    return sum(c.isdigit() for c in text) >= PHONE_MIN_DIGITS and not looks_like_date(text)
