"""Personal data and secrets: what each detector finds, what it must leave alone, redaction."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from turing.tools.datasets.pii import (
    PII_TYPES,
    PLACEHOLDERS,
    PiiMatch,
    find_pii,
    iban_valid,
    ipv6_valid,
    luhn_valid,
    redact_pii,
)

RSA_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc==\n-----END RSA PRIVATE KEY-----"
SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_Xg"

# (text, type, the exact text the match covers; None: all of the text)
POSITIVES = [
    # email
    ("mail me at john.doe@example.com today", "email", "john.doe@example.com"),
    ("john.doe+newsletter@mail.example.co.uk", "email", "john.doe+newsletter@mail.example.co.uk"),
    ("Contact: <Jane_O-Neil@sub.domain.org>.", "email", "Jane_O-Neil@sub.domain.org"),
    ("mailto:support@github.com", "email", "support@github.com"),
    # phone
    ("Call +44 20 7946 0958 after six", "phone", "+44 20 7946 0958"),
    ("call +1-202-555-0143 now", "phone", "+1-202-555-0143"),
    ("office (202) 555-0143", "phone", "(202) 555-0143"),
    ("cell 202-555-0143.", "phone", "202-555-0143"),
    ("or 202.555.0143", "phone", "202.555.0143"),
    ("toll free 1-800-555-0199", "phone", "1-800-555-0199"),
    ("+14155552671 (E.164)", "phone", "+14155552671"),
    ("+44 (0)20 7946 0958", "phone", "+44 (0)20 7946 0958"),
    ("+33 6 12 34 56 78", "phone", "+33 6 12 34 56 78"),
    ("London 020 7946 0958", "phone", "020 7946 0958"),
    ("portable 06 12 34 56 78", "phone", "06 12 34 56 78"),
    ("Berlin 030 12345678", "phone", "030 12345678"),
    ("Tel.: 06.12.34.56.78", "phone", "06.12.34.56.78"),
    ("Phone:202-555-0143", "phone", "202-555-0143"),
    # payment card (all Luhn-valid test numbers)
    ("card 4111 1111 1111 1111 exp 12/27", "payment_card", "4111 1111 1111 1111"),
    ("4111-1111-1111-1111", "payment_card", "4111-1111-1111-1111"),
    ("pay with 5555555555554444", "payment_card", "5555555555554444"),
    ("amex 378282246310005", "payment_card", "378282246310005"),
    ("amex 3782 822463 10005", "payment_card", "3782 822463 10005"),
    ("discover 6011111111111117", "payment_card", "6011111111111117"),
    ("visa 13 digits 4222222222222", "payment_card", "4222222222222"),
    # IBAN (mod-97 valid)
    ("IBAN DE89 3704 0044 0532 0130 00, thanks", "iban", "DE89 3704 0044 0532 0130 00"),
    ("GB82WEST12345698765432", "iban", "GB82WEST12345698765432"),
    ("to NL91 ABNA 0417 1643 00", "iban", "NL91 ABNA 0417 1643 00"),
    ("FR14 2004 1010 0505 0001 3M02 606", "iban", "FR14 2004 1010 0505 0001 3M02 606"),
    ("BE68 5390 0754 7034 DEMO", "iban", "BE68 5390 0754 7034"),
    # national id
    ("SSN 123-45-6789 on file", "national_id", "123-45-6789"),
    ("NI number AB 12 34 56 C", "national_id", "AB 12 34 56 C"),
    ("NINO: CE123456D.", "national_id", "CE123456D"),
    # IP address
    ("server at 192.168.1.1", "ip_address", "192.168.1.1"),
    ("gateway 10.0.0.255.", "ip_address", "10.0.0.255"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ip_address", None),
    ("link-local fe80::1 only", "ip_address", "fe80::1"),
    ("use 2001:db8::ff00:42:8329", "ip_address", "2001:db8::ff00:42:8329"),
    ("mapped ::ffff:192.0.2.128", "ip_address", "::ffff:192.0.2.128"),
    # secrets
    ("aws AKIAIOSFODNN7EXAMPLE key", "secret", "AKIAIOSFODNN7EXAMPLE"),
    ("ASIAY34FZKBOKMUTVV7A", "secret", "ASIAY34FZKBOKMUTVV7A"),
    ("ghp_" + "aB3" * 12, "secret", "ghp_" + "aB3" * 12),
    ("gho_16C7e42F292c6912E7710c838347Ae178B4a", "secret", None),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv", "secret", None),
    ("OPENAI_KEY sk-" + "Ab1" * 16, "secret", "sk-" + "Ab1" * 16),
    ("sk-proj-abc123def456ghi789jkl012mno", "secret", None),
    ("sk-abcdefghijklmnopqrstuvwxyz", "secret", None),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "secret", None),
    ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "secret", None),
    ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "secret", None),
    (f"Authorization: Bearer {JWT}", "secret", JWT),
    (f"key:\n{RSA_KEY}\n", "secret", RSA_KEY),
    (SSH_KEY, "secret", None),
    ("api_key=abcd1234efgh5678", "secret", "abcd1234efgh5678"),
    ("password: hunter2hunter2", "secret", "hunter2hunter2"),
    ('secret_token = "s3cr3t-v@lue"', "secret", "s3cr3t-v@lue"),
    ('DB_PASSWORD="Tr0ub4dor&3"', "secret", "Tr0ub4dor&3"),
    ('{"password": "correcthorse"}', "secret", "correcthorse"),
    ("clientSecret: x9Yz_88abc!", "secret", "x9Yz_88abc!"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "secret", "wJalrXUtnFEMI/K7MDENG"),
    ("GITHUB_TOKEN=abc123def456ghi7.", "secret", "abc123def456ghi7"),
]  # fmt: skip

# Look like personal data to a careless pattern; are not.
NEGATIVES = [
    "2024-01-15",
    "15/01/2024",
    "01.02.2023",
    "on 01-02-2023 14:30",
    "2023-10-05 12:30:45",
    "2024-01-15T10:20:30Z",
    "at 10:30 or 12:30:45",
    "$1,234.56",
    "€1.234.567,89",
    "1 000 000 users",
    "1,000,000",
    "It's 2018 not 1818.",
    "between 1990-2000",
    "Python 3.11.7",
    "v1.2.3",
    "version 1.2.3.4",
    "v1.2.3.4",
    "Section 1.2.3.4",
    "numpy 1.26.4 and 10.000.000.000",
    "order 12345",
    "ticket #4821",
    "order #123456",
    "SKU 12345",
    "50% off",
    "12.5%",
    "H1 and H2 headings on A4 paper",
    "COVID-19, MP3, B2B, A1B2C3",
    "The Quick Brown Fox Jumps",
    "call 911 or 112",
    "call 555-0143",
    "ISBN 978-3-16-148410-0",
    "Invoice INV-2023-00042",
    "UUID 123e4567-e89b-12d3-a456-426614174000",
    "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "1234567890",
    "ms timestamp 1700000000000",
    "4111 1111 1111 1112",  # fails Luhn
    "DE89 3704 0044 0532 0130 01",  # fails mod-97
    "000-12-3456",  # SSN area 000
    "666-12-3456",  # SSN area 666
    "900-12-3456",  # SSN area 9xx
    "123-00-4567",  # SSN group 00
    "123-45-0000",  # SSN serial 0000
    "QQ 12 34 56 C",  # NINO prefix Q not issued
    "BG 12 34 56 A",  # NINO prefix BG not issued
    "ipv4 999.1.1.1",
    "C++ std::vector and Foo::Bar",
    "MAC 00:1A:2B:3C:4D:5E",
    "ratio 16:9, John 3:16",
    "lat 40.7128 lon -74.0060",
    "error 0x80070005",
    "Password must be at least 8 characters",
    "password: forgotten",
    "Reset your password: https://example.com/reset",
    "tokenizer = AutoTokenizer.from_pretrained('gpt2')",
    "max_tokens=100000000",
    "api_key = os.environ['OPENAI_API_KEY']",
    "password = ********",
    "pad_token = '<|endoftext|>'",
    "api_key=settings.API_KEY",
    "sk-learn-compatible-estimator-pipeline",
    "monkey = 'bananas123'",
]

# The 10,003 Banking77 training texts hold no personal data: at most this share may be flagged.
BANKING77_FLAGGED_AT_MOST = 0.005


@pytest.mark.parametrize(("text", "kind", "covered"), POSITIVES)
def test_finds_each_type(text: str, kind: str, covered: str | None) -> None:
    found = find_pii(text)
    expected = text if covered is None else covered
    assert [(match.type, text[match.start : match.end]) for match in found] == [(kind, expected)]


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_text_is_not_pii(text: str) -> None:
    assert find_pii(text) == []


def test_types_and_placeholders() -> None:
    assert PII_TYPES == (
        "email",
        "phone",
        "payment_card",
        "iban",
        "national_id",
        "ip_address",
        "secret",
    )
    assert [PLACEHOLDERS[kind] for kind in PII_TYPES] == [
        "[EMAIL]",
        "[PHONE]",
        "[PAYMENT_CARD]",
        "[IBAN]",
        "[NATIONAL_ID]",
        "[IP_ADDRESS]",
        "[SECRET]",
    ]


def test_matches_are_sorted_and_do_not_overlap() -> None:
    text = (
        "Reach jane@example.com or +44 20 7946 0958; card 4111 1111 1111 1111, "
        "IBAN GB82WEST12345698765432, SSN 123-45-6789, host 10.1.2.3, "
        "api_key=abcd1234efgh5678 and again jane@example.com"
    )
    found = find_pii(text)
    assert [match.type for match in found] == [
        "email",
        "phone",
        "payment_card",
        "iban",
        "national_id",
        "ip_address",
        "secret",
        "email",
    ]
    assert all(match.start < match.end for match in found)
    assert all(left.end <= right.start for left, right in itertools.pairwise(found))
    assert all(isinstance(match, PiiMatch) for match in found)


def test_redact_replaces_each_match_with_its_placeholder() -> None:
    text = "Email a@b.com or call +44 20 7946 0958; api_key=abcd1234efgh5678"
    assert redact_pii(text) == "Email [EMAIL] or call [PHONE]; api_key=[SECRET]"


def test_redact_keeps_the_name_of_an_assignment() -> None:
    assert redact_pii('password: "hunter2hunter2"') == 'password: "[SECRET]"'
    assert redact_pii("DB_PASSWORD=Tr0ub4dor&3 next") == "DB_PASSWORD=[SECRET] next"


def test_redact_uses_the_given_matches() -> None:
    text = "ab@cd.com and 192.168.0.1"
    only_ip = [match for match in find_pii(text) if match.type == "ip_address"]
    assert redact_pii(text, only_ip) == "ab@cd.com and [IP_ADDRESS]"
    assert redact_pii(text, []) == text
    unordered = [PiiMatch("ip_address", 14, 25), PiiMatch("email", 0, 9)]
    assert redact_pii(text, unordered) == "[EMAIL] and [IP_ADDRESS]"


def test_text_without_pii_comes_back_unchanged() -> None:
    text = "I am still waiting on my card?"
    assert find_pii(text) == []
    assert redact_pii(text) is text
    assert find_pii("") == []
    assert redact_pii("") == ""


def test_a_card_must_pass_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert find_pii("4111111111111111")
    assert not find_pii("4111111111111112")


def test_iban_check_uses_length_and_mod_97() -> None:
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001")  # check digits
    assert not iban_valid("DE8937040044053201300")  # one short for Germany
    assert not iban_valid("ZZ89370400440532013000")  # no such country


def test_ipv6_validation() -> None:
    assert ipv6_valid("2001:db8::1")
    assert ipv6_valid("::ffff:192.0.2.128")
    assert not ipv6_valid("1::2::3")
    assert not ipv6_valid("12345::1")
    assert not ipv6_valid("1:2:3:4:5:6:7")


def test_an_unterminated_private_key_is_still_a_secret() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n(truncated"
    found = find_pii(text)
    assert [match.type for match in found] == ["secret"]
    assert text[found[0].start : found[0].end].startswith("-----BEGIN PRIVATE KEY-----\nMIIE")


def test_long_text_with_many_candidates() -> None:
    text = " ".join(f"user{index}@example.com 192.168.0.{index % 250}" for index in range(200))
    found = find_pii(text)
    assert len(found) == 400
    assert redact_pii(text).count("[EMAIL]") == 200


def test_banking77_texts_are_almost_never_flagged(shared_data: Path) -> None:
    with (shared_data / "banking77" / "train.csv").open(encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    assert len(texts) == 10003
    flagged = [text for text in texts if find_pii(text)]
    assert len(flagged) <= BANKING77_FLAGGED_AT_MOST * len(texts), flagged
