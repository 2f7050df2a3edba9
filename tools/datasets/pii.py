"""Find and redact personal data and secrets in message text.

Pure and stdlib only: every pattern is compiled at import and `find_pii` returns at once, after
one cheap scan, for text in which no detector could match (most text). Detectors favour
precision: a match is checked beyond its shape wherever a check exists (Luhn for payment
cards, ISO 13616 mod-97 and the country's length for IBANs, the allocation rules of US Social
Security and UK National Insurance numbers, octet ranges for IPv4), and dates, times, amounts,
versions, percentages and short numbers are never phones.

Types and what each one covers:

- email: ordinary addresses, plus tags and subdomains included.
- phone: international numbers written with a leading "+" (8 to 15 digits), North American
  numbers ((202) 555-0143, 202-555-0143, 202.555.0143, optionally after "1 "), and European
  national numbers that start with 0 and are written in groups (020 7946 0958,
  06 12 34 56 78, 030 12345678; 9 to 12 digits). A run of digits without separators is a
  phone only after "+": bare runs are far more often order, account or reference numbers.
- payment_card: 13 to 19 digits, contiguous or grouped as cards are printed (4-4-4-4,
  4-4-4-4-3, Amex's 4-6-5, Diners' 4-6-4) with spaces or dashes, passing the Luhn check,
  starting with 2-6 (the ISO/IEC 7812 major industry identifiers of banking and payment
  cards) and not all one digit.
- iban: two capital letters, two check digits and the BBAN, compact or in space-separated
  groups of 4; the length must be the registered one for that country and mod-97 must be 1.
  Text shaped like an IBAN that fails the check is nothing (not a card or phone either).
- national_id: US Social Security numbers written ddd-dd-dddd (area not 000, 666 or 9xx,
  group not 00, serial not 0000) and UK National Insurance numbers in capitals (valid prefix
  letters, six digits, suffix A-D, spaces allowed between the pairs).
- ip_address: IPv4 with octets 0-255 (not part of a longer dotted number, not after "v",
  "version", "release", "build", "section" or "chapter"), IPv6 in full or compressed form
  (compressed needs at least two groups and a digit, so "::" and "std::move" are not).
- secret: AWS access key ids, GitHub, OpenAI, Slack, Google API and Hugging Face tokens, JWTs,
  PEM private key blocks and the value of assignments such as `api_key=...`,
  `password: ...` or `secret_token = "..."` (the value is redacted, the name kept).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

PII_TYPES: tuple[str, ...] = (
    "email",
    "phone",
    "payment_card",
    "iban",
    "national_id",
    "ip_address",
    "secret",
)

PLACEHOLDERS: dict[str, str] = {kind: f"[{kind.upper()}]" for kind in PII_TYPES}


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data or one secret: its type and character offsets in the text."""

    type: str
    start: int
    end: int


# A candidate: (type, start, end).
_Span = tuple[str, int, int]
# The type of a candidate that only keeps other detectors off its span; never reported.
_SHIELD = ""

# Cheapest first: text without any of these characters or prefixes cannot hold a match of any
# detector below (digits: phones, cards, IBANs, national ids, IPv4; "@": emails; ":": IPv6 and
# "name: value" secrets; "=": "name = value" secrets; "_": GitHub and Hugging Face tokens; the
# rest: the token prefixes sk-, xox, -----BEGIN, AIza, AKIA/ASIA and eyJ). Written as one
# character class, which the regex engine scans in a tight loop, each prefix confirmed by a
# lookbehind only where its last character is found.
_PRECHECK = re.compile(
    r"[-0-9@:=_IJx](?:(?<=[0-9@:=_])|(?<=sk-)|(?<=-----)|(?<=AI)za|(?<=A[KS]I)A|(?<=eyJ)|(?<=x)ox)"
).search

# Digit detectors only run where digits come close together: every phone, card, national id
# and IPv4 has a run of 6+ characters of digits and separators (1.1.1.1 is the shortest); an
# IBAN starts with two capitals and two digits.
_DIGIT_RUN = re.compile(r"\d[\d \-.()/]{4,}\d").search
_IBAN_START = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d").search

# ---------------------------------------------------------------------------------- email

_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)


def _emails(text: str) -> Iterator[_Span]:
    # Read outwards from each "@": the domain by pattern, the local part back to its start.
    at = text.find("@")
    while at != -1:
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if domain is not None:
            start = at
            while start > 0 and at - start < 64 and text[start - 1] in _EMAIL_LOCAL:
                start -= 1
            if start > 0 and text[start - 1] in _EMAIL_LOCAL:
                start = at  # a local part longer than 64 characters is not an address
            while start < at and text[start] == ".":
                start += 1  # nor does one start or end with a dot
            if start < at and text[at - 1] != "." and ".." not in text[start:at]:
                yield ("email", start, domain.end())
        at = text.find("@", at + 1)


# ---------------------------------------------------------------------------------- phone

# Never after something that makes the digits an amount, a code, a path or part of a word.
_NOT_AFTER = r"\w+\-./,#$€£¥%"
# Never followed by more of a number, a percentage or a unit glued to the digits.
_AFTER_NUMBER = r"(?![\w]|[.,:/\-]\d|\s?%)"

# Every pattern starts with a character (class), its left context checked by a lookbehind just
# after it, so that the regex engine skips ahead to candidate characters in a tight loop.
# Possessive quantifiers throughout: a long run of digits is read once, never re-split.
_PHONE_INTERNATIONAL = re.compile(
    r"\+(?<![\w+]\+)\d++(?:[ .\-]?\(\d++\)(?:[ .\-]?\d++)?|[ .\-]\d++)*+" + _AFTER_NUMBER
)
_PHONE_NORTH_AMERICA = re.compile(
    rf"[1-9](?<![{_NOT_AFTER}][1-9])"
    r"(?:(?<=1)[ .\-](?:\([2-9]\d\d\)[ .\-]?|[2-9]\d\d[ .\-])|(?<=[2-9])\d\d[ .\-])"
    r"[2-9]\d\d[ .\-]\d{4}" + _AFTER_NUMBER
)
_PHONE_NORTH_AMERICA_PARENS = re.compile(
    rf"\((?<![{_NOT_AFTER}]\()[2-9]\d\d\)[ .\-]?[2-9]\d\d[ .\-]\d{{4}}" + _AFTER_NUMBER
)
# A trunk 0 and an area code, or a 00 international prefix and a country code, then groups.
_PHONE_NATIONAL = re.compile(
    rf"[(0](?<![{_NOT_AFTER}(][(0])"
    r"(?:(?<=\()0[1-9]\d*+\)[ .\-]?\d++|(?<=0)0?[1-9]\d*+)(?:[ .\-]\d++)*+" + _AFTER_NUMBER
)
_NON_DIGIT = re.compile(r"\D")
_DIGIT_GROUP = re.compile(r"\d+")


def _digits(value: str) -> str:
    return _NON_DIGIT.sub("", value)


def _national_phone(value: str) -> bool:
    """Written in groups (no bare runs), a short first group, 9+ digits (no 01.02.2023)."""
    groups = _DIGIT_GROUP.findall(value)
    if len(groups) < 2 or len(groups[0]) > 5 or any(len(group) < 2 for group in groups[1:]):
        return False
    count = sum(len(group) for group in groups)
    return 9 <= count <= (15 if value.startswith("00") else 12)


def _phones(text: str) -> Iterator[_Span]:
    for found in _PHONE_INTERNATIONAL.finditer(text):
        if 8 <= len(_digits(found.group())) <= 15:
            yield ("phone", *found.span())
    for pattern in (_PHONE_NORTH_AMERICA, _PHONE_NORTH_AMERICA_PARENS):
        for found in pattern.finditer(text):
            yield ("phone", *found.span())
    for found in _PHONE_NATIONAL.finditer(text):
        if _national_phone(found.group()):
            yield ("phone", *found.span())


# --------------------------------------------------------------------------- payment card

_CARD = re.compile(
    rf"[2-6](?<![{_NOT_AFTER}][2-6])(?:\d{{12,18}}"
    r"|\d{3}(?:[ \-]\d{4}){3}(?:[ \-]\d{3})?"
    r"|\d{3}[ \-]\d{6}[ \-]\d{4,5})" + _AFTER_NUMBER
)


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn (mod 10) check."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _cards(text: str) -> Iterator[_Span]:
    for found in _CARD.finditer(text):
        digits = _digits(found.group())
        if (
            13 <= len(digits) <= 19
            and digits.count(digits[0]) != len(digits)
            and luhn_valid(digits)
        ):
            yield ("payment_card", *found.span())


# ----------------------------------------------------------------------------------- IBAN

# Registered IBAN lengths (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d"
    r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![A-Za-z0-9])"
)


def iban_valid(compact: str) -> bool:
    """Whether a compact IBAN has its country's length and passes the ISO 13616 mod-97 check."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _ibans(text: str) -> Iterator[_Span]:
    for found in _IBAN.finditer(text):
        start, end = found.span()
        value = found.group()
        length = IBAN_LENGTHS.get(value[:2])
        if length is None:
            continue
        compact = value.replace(" ", "")
        if len(compact) > length and " " in value:
            # The grouped form may have run into a following word of capitals: cut at the
            # country's length when that falls at the end of a group.
            seen = 0
            for index, char in enumerate(value):
                if char != " ":
                    seen += 1
                if seen == length:
                    cut = index + 1
                    break
            if value[cut : cut + 1] != " ":
                yield (_SHIELD, start, end)
                continue
            end = start + cut
            compact = compact[:length]
        # An IBAN-shaped run that fails the check still shields its digits from the card and
        # phone detectors: a mistyped account number is not a phone.
        yield ("iban" if iban_valid(compact) else _SHIELD, start, end)


# ---------------------------------------------------------------------------- national id

_SSN = re.compile(
    r"[0-8](?<![\w\-./][0-8])\d\d(?<!000|666)-(?!00)\d\d-(?!0000)\d{4}(?![\w]|[\-./]\d)"
)
# First letter not D F I Q U V; second not D F I O Q U V; BG GB KN NK NT TN ZZ never issued.
_NINO = re.compile(
    r"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9][A-Z])[A-CEGHJ-NPR-TW-Z](?<!BG|GB|KN|NK|NT|TN|ZZ)"
    r" ?\d\d ?\d\d ?\d\d ?[A-D](?![A-Za-z0-9])"
)


def _national_ids(text: str) -> Iterator[_Span]:
    for pattern in (_SSN, _NINO):
        for found in pattern.finditer(text):
            yield ("national_id", *found.span())


# ----------------------------------------------------------------------------- IP address

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV4_FULL = re.compile(_OCTET + r"(?:\." + _OCTET + r"){3}")
_VERSION_BEFORE = re.compile(
    r"(?i)(?:\bv|\bver|\bversion|\brelease|\bbuild|\bsection|\bchapter|§)\.?\s*$"
)
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:]|\.\d)"
)
# Every IPv6 has "::" or three groups in a row; found from the ":" that a literal scan jumps to.
_IPV6_HINT = re.compile(r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)").search
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{1,4}")


def ipv6_valid(value: str) -> bool:
    """Whether a string is an IPv6 address in full or "::" form (an IPv4 tail allowed)."""
    if "." in value:
        head, _, tail = value.rpartition(":")
        if not _IPV4_FULL.fullmatch(tail):
            return False
        value = head + ":0:0"
    if value.count("::") > 1 or ":::" in value:
        return False
    if "::" in value:
        left, right = value.split("::")
        groups = (left.split(":") if left else []) + (right.split(":") if right else [])
        if len(groups) > 7:
            return False
    else:
        groups = value.split(":")
        if len(groups) != 8:
            return False
    return all(_HEX_GROUP.fullmatch(group) for group in groups)


def _ip_addresses(text: str, digits: bool) -> Iterator[_Span]:
    if digits:
        for found in _IPV4.finditer(text):
            start = found.start()
            if not _IPV4_FULL.fullmatch(found.group()):
                continue  # an octet over 255 or with a leading zero
            if not _VERSION_BEFORE.search(text, max(0, start - 12), start):
                yield ("ip_address", start, found.end())
    if _IPV6_HINT(text):
        for found in _IPV6.finditer(text):
            value = found.group()
            if not ipv6_valid(value):
                continue
            if "::" in value:
                # "fe80::1" yes; "::", "::1", "ab::cd" (no digit: a word or code) no.
                groups = [group for group in value.replace("::", ":").split(":") if group]
                if len(groups) < 2 or not any(char.isdigit() for char in value):
                    continue
            yield ("ip_address", *found.span())


# -------------------------------------------------------------------------------- secrets

_TOKEN = re.compile(
    r"A(?<![A-Za-z0-9]A)(?:[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9])|Iza[0-9A-Za-z_\-]{35}(?![\w\-]))"
    r"|g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{20,255}|ithub_pat_[A-Za-z0-9_]{20,255})"
    r"(?![A-Za-z0-9_])"
    r"|s(?<![A-Za-z0-9_\-]s)k-(?:proj-|svcacct-|admin-)?(?P<openai>[A-Za-z0-9_\-]{20,})"
    r"|x(?<![A-Za-z0-9_\-]x)ox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|h(?<![A-Za-z0-9_\-]h)f_[A-Za-z0-9]{30,}(?![A-Za-z0-9_\-])"
    r"|e(?<![A-Za-z0-9_\-]e)yJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+"
)
_TOKEN_PREFIXES = (
    "AKIA", "ASIA", "ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_", "sk-", "xox", "AIza",
    "hf_", "eyJ",
)  # fmt: skip

_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s]*)",
    re.DOTALL,
)

# `name = value`, `name: value`, `"name": "value"`, where the name is an identifier whose last
# component is secret-like (API_KEY, db_password, clientSecret, GITHUB_TOKEN, passwd, auth ...).
# Found from each occurrence of a stem (a plain substring search), never by trying the pattern
# at every position of the text.
_SECRET_NAME_STEMS = ("key", "secret", "token", "pass", "pwd", "credential", "auth")
_ASSIGNMENT = re.compile(
    r"(?i:key(?:[_\-]?id)?|secret|token|password|passwd|passphrase|pwd|pass|credentials?|auth)"
    r"(?![A-Za-z0-9_])[\"']?[ \t]*(?P<sep>:=|=>|[:=])(?!=)[ \t]*(?P<quote>[\"'`]?)"
    r"(?P<value>[^\s\"'`]{8,})"
)
_STEM = re.compile(r"(?i:key|secret|token|pass|pwd|credential|auth)")
# "key" alone names too much (sort_key, primary_key): only api_key, apiKey, ACCESS_KEY ...
_KEY_QUALIFIER = re.compile(r"(?i:api|access|secret|private)[_\-]?\Z")
_VALUE_TRAILER = ".,;:)]}>"
_BRACKETS = re.compile(r"[()\[\]{}]").search
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_PLACEHOLDER_WORDS = frozenset(
    {"required", "optional", "none", "null", "undefined", "true", "false", "string", "redacted"}
)


def _stem_positions(text: str) -> Iterator[int]:
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower to two: offsets would drift
        for found in _STEM.finditer(text):
            yield found.start()
        return
    for stem in _SECRET_NAME_STEMS:
        index = lowered.find(stem)
        while index != -1:
            yield index
            index = lowered.find(stem, index + 1)


def _name_component_starts(text: str, index: int) -> bool:
    """Whether the stem at `index` begins a component of an identifier (or is qualified key)."""
    if text[index] in "kK":
        return _KEY_QUALIFIER.search(text, max(0, index - 8), index) is not None
    if index == 0:
        return True
    before = text[index - 1]
    return not before.isalnum() or (text[index].isupper() and not before.isupper())


def _plausible_secret(value: str, separator: str, quoted: bool) -> bool:
    if value[0] in "$%{<*&@#" or _BRACKETS(value) or value.count(value[0]) == len(value):
        return False  # a template, a variable, a call or a mask such as "********"
    if value.lower() in _PLACEHOLDER_WORDS or _ATTRIBUTE.fullmatch(value) or "://" in value:
        return False  # a placeholder, `settings.API_KEY` or a link
    # "Password: forgotten" is prose; a word after a colon is only a secret when quoted.
    return not (separator == ":" and not quoted and value.isalpha())


def _secrets(text: str) -> Iterator[_Span]:
    if "-----BEGIN" in text:
        for found in _PEM.finditer(text):
            yield ("secret", *found.span())
    if any(prefix in text for prefix in _TOKEN_PREFIXES):
        for found in _TOKEN.finditer(text):
            body = found.group("openai")
            # sk-learn-compatible-... is prose: a key is one random run or has a digit.
            if body and "-" in body and not any(char.isdigit() for char in body):
                continue
            yield ("secret", *found.span())
    if ":" in text or "=" in text:
        yield from _assignments(text)


def _assignments(text: str) -> Iterator[_Span]:
    taken = 0  # a name inside a value already found is part of that value
    for index in sorted(set(_stem_positions(text))):
        if index < taken or not _name_component_starts(text, index):
            continue
        found = _ASSIGNMENT.match(text, index)
        if found is None:
            continue
        start, end = found.span("value")
        quoted = bool(found.group("quote"))
        if not quoted:
            while end > start and text[end - 1] in _VALUE_TRAILER:
                end -= 1
        value = text[start:end]
        taken = found.end()
        if len(value) >= 8 and _plausible_secret(value, found.group("sep"), quoted):
            yield ("secret", start, end)


# -------------------------------------------------------------------------------- finding

# When two candidates overlap the one of the earlier type here wins.
_PRIORITY = {
    kind: rank
    for rank, kind in enumerate(
        ("secret", "email", "iban", _SHIELD, "payment_card", "national_id", "ip_address", "phone")
    )
}


def _candidates(text: str) -> Iterator[_Span]:
    yield from _secrets(text)
    if "@" in text:
        yield from _emails(text)
    digits = _DIGIT_RUN(text) is not None
    if digits or _IBAN_START(text):
        yield from _ibans(text)
    if digits:
        yield from _cards(text)
        yield from _national_ids(text)
    if digits or ":" in text:
        yield from _ip_addresses(text, digits)
    if digits:
        yield from _phones(text)


def find_pii(text: str) -> list[PiiMatch]:
    """Personal data and secrets in `text`: non-overlapping matches sorted by start."""
    if not text or not _PRECHECK(text):
        return []
    candidates = sorted(
        _candidates(text), key=lambda span: (_PRIORITY[span[0]], span[1], span[1] - span[2])
    )
    if not candidates:
        return []
    kept: list[_Span] = []
    for candidate in candidates:
        _, start, end = candidate
        if start < end and all(end <= other[1] or start >= other[2] for other in kept):
            kept.append(candidate)
    kept.sort(key=lambda span: span[1])
    return [PiiMatch(kind, start, end) for kind, start, end in kept if kind]


def redact_pii(text: str, matches: Sequence[PiiMatch] | None = None) -> str:
    """`text` with each match replaced by its placeholder, such as "[EMAIL]" or "[SECRET]".

    Finds the matches when `matches` is None. Given matches may come in any order; one that
    overlaps an earlier-starting one is skipped.
    """
    if matches is None:
        matches = find_pii(text)
    if not matches:
        return text
    parts: list[str] = []
    position = 0
    for match in sorted(matches, key=lambda found: (found.start, -found.end)):
        if match.start < position:
            continue
        parts.append(text[position : match.start])
        parts.append(PLACEHOLDERS.get(match.type, f"[{match.type.upper()}]"))
        position = match.end
    parts.append(text[position:])
    return "".join(parts)
