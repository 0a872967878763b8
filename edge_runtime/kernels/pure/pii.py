"""PII scanner, pure-Python twin of kernels/pii.pyx (same state machine, same results).

scan(text) -> [(start, end, kind)], code-point offsets, sorted by start, never overlapping.

How it works: one left-to-right pass tries each matcher at the positions where its kind can
start (EMAIL at '@', numbers at a digit/'+'/'(' after a non-word character, SECRET once per
run of token characters) and collects candidates; validators (Luhn, mod-97, octet ranges,
entropy) run on each candidate. Conflicts are settled by KINDS order (EMAIL first, SECRET
last; at equal kind the earlier start wins): a candidate is kept only if it overlaps nothing
kept before it.

Decisions (both twins):
- Unicode: the matchers read a normalised view of the text and every span is mapped back to the
  original code points (it covers orig[start of its first character : end of its last], so the
  separators and invisible characters inside a value are redacted with it). Per code point (`fold`):
  category Cf and U+00AD are removed; otherwise NFKC (full-width -> ASCII, ligatures, ...), then
  category Zs -> ' ', category Pd and U+2212 -> '-', category Nd -> its ASCII digit. Tabs and
  newlines stay what they are. ASCII text is scanned as it is (no view, no map).
- Character classes of the matchers are ASCII: non-ASCII letters that survive `fold` are plain separators
  (except around secret keywords, whose boundaries are any letter).
- CARD: 13-19 digits (12 for Maestro: IIN 50, 56-69), first digit not 0, one separator kind (' ' or '-')
  between groups of 3-6 digits (the last 1-6), Luhn; the longest valid prefix of the groups wins.
- PHONE: '+' or '00' then 8-15 digits; or a trunk '0' then 9-12 digits (9-11 when written
  as one plain block); or North American 3-3-4 / 1-3-3-4 groups, or 10 plain digits whose
  area code and exchange start with 2-9; or an Italian mobile, 9-11 plain digits starting with 3.
  A number never starts right after 'digit + space'. Separators ' ', '-', '.', one parenthesised group
  ('(0)' does not count after a country code), extension 'x123'.
- IBAN: country code with a known length in any case, 2 check digits, BBAN letters in any case, spaces only
  every 4; mod-97 on the upper-cased characters.
- SECRET: known key prefixes (sk-, sk_live_, ghp_, github_pat_, AKIA/ASIA, xox?-, AIza,
  glpat-), JWTs, the token after 'Bearer ', values of key=/token=/secret=/password=, or a
  token of >= 20 characters with lower, upper and digit, not hex-only, not path-like (a
  leading '/'), with < 40% of adjacent pairs being two lower-case (or two upper-case)
  letters (words, CamelCase, paths) and with Shannon entropy >= 3.5 bits/char. A 40-hex git sha or a UUID is
  not a secret by itself (hex-only); only a key-like prefix or context makes a hex token a secret (never a UUID).
- SECRET after a keyword (SECRET_KEYWORDS: password, PIN, token, ... in the tagger corpus's languages, matched
  case-insensitively, not inside a longer word): `keyword: value`, `keyword = value`, `keyword <copula> value`
  (COPULAS: is, ist, est, es, ...; not when the value is one of COPULA_STOPWORDS, e.g. "is incorrect"), and
  `keyword value` only when the value looks like a secret (a digit, >= 4 characters). The value runs to the next
  space; trailing sentence punctuation and quotes (VALUE_TRAILING) are not part of it; a value in quotes
  (OPEN_QUOTES ... CLOSE_QUOTES, one line, <= QUOTED_MAX characters) is taken whole, quotes excluded.
- Dates, times, versions, UUIDs, order numbers and short numbers match no rule.
"""

from __future__ import annotations

import functools
import math
import unicodedata

KINDS = ("EMAIL", "IBAN", "CARD", "IPV6", "MAC", "IPV4", "PHONE", "SECRET")
EMAIL, IBAN, CARD, IPV6, MAC, IPV4, PHONE, SECRET = range(8)

# country -> IBAN length (ISO 13616 registry, the common countries)
IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BR": 29,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NL": 18,
    "NO": 15,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "SA": 24,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VG": 24,
    "XK": 20,
}
# (prefix, minimum length of the rest)
SECRET_PREFIXES = (
    ("sk-", 20),
    ("sk_live_", 16),
    ("sk_test_", 16),
    ("pk_live_", 16),
    ("pk_test_", 16),
    ("rk_live_", 16),
    ("rk_test_", 16),
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("github_pat_", 20),
    ("xoxb-", 10),
    ("xoxp-", 10),
    ("xoxa-", 10),
    ("xoxs-", 10),
    ("AIza", 30),
    ("glpat-", 20),
)
SECRET_KEY_NAMES = ("key", "token", "secret", "password", "passwd", "pwd")
SECRET_MIN_LENGTH = 20
CONTEXT_MIN_LENGTH = 8
ENTROPY_BITS = 3.5
ENTROPY_WINDOW = 1024  # entropy is measured on a token's first 1024 characters
# fixed-point k*log2(k) so both twins compare entropies in exact integer arithmetic
XLOGX = [0] + [int(k * math.log2(k) * 1024.0) for k in range(1, ENTROPY_WINDOW + 1)]
PAD = 8  # zero code points after the text: look-ahead never needs a bounds check

# Keywords whose value is a secret, lower-case; ' ' matches a run of spaces, "'" a straight or curly apostrophe.
# English plus the languages of the tagger corpus's Faker locales (de fr es it nl pt pl sv da cs).
SECRET_KEYWORDS = (
    "password",
    "passcode",
    "passwd",
    "pwd",
    "pin",
    "pin code",
    "token",
    "passphrase",
    "passwort",
    "kennwort",
    "geheimzahl",
    "mot de passe",
    "code pin",
    "code secret",
    "contraseña",
    "clave",
    "parola d'ordine",
    "wachtwoord",
    "pincode",
    "senha",
    "palavra-passe",
    "hasło",
    "haslo",
    "lösenord",
    "lösenordet",
    "losenord",
    "pinkod",
    "pinkoden",
    "adgangskode",
    "adgangskoden",
    "kodeord",
    "kodeordet",
    "heslo",
)
COPULAS = ("is", "ist", "lautet", "est", "es", "è", "é", "jest", "är", "er", "je", "was")
# `keyword is <stopword>` talks about the secret, it does not give it ("the password is incorrect")
COPULA_STOPWORDS = (
    "a",
    "an",
    "the",
    "not",
    "too",
    "very",
    "still",
    "now",
    "being",
    "incorrect",
    "wrong",
    "invalid",
    "expired",
    "required",
    "correct",
    "missing",
    "empty",
    "weak",
    "strong",
    "reset",
    "changed",
    "locked",
    "same",
    "different",
    "needed",
    "for",
    "to",
    "on",
    "in",
    "of",
    "at",
    "and",
    "or",
    "my",
    "your",
    "our",
    "this",
    "that",
    "what",
    "it",
    "für",
    "pour",
    "para",
    "per",
    "voor",
    "nicht",
    "falsch",
    "abgelaufen",
    "pas",
    "no",
    "niet",
    "nie",
    "inte",
    "ikke",
    "ne",
)
OPEN_QUOTES = "\"'`\u201c\u201e\u2018\u201a\u00ab\u2039"
CLOSE_QUOTES = "\"'`\u201d\u201c\u2019\u2018\u00bb\u203a"
APOSTROPHES = "'\u2019\u2018\u02bc"
VALUE_TRAILING = ".,;:!?)]}>\"'`\u201d\u201c\u2019\u2018\u00bb\u203a\u3002\u3001"
VALUE_ENDS = " \t\n\r\x0b\x0c\x00\x85\u2028\u2029"  # a value runs to one of these
QUOTED_MAX = 128
# upper -> lower for the non-ASCII letters of the keywords (ASCII letters fold by +32)
KEYWORD_CASE = {
    ord(c.upper()): ord(c) for word in SECRET_KEYWORDS + COPULAS for c in word if not c.isascii() and c.isalpha()
}
KEYWORD_FIRST = frozenset(
    code for word in SECRET_KEYWORDS for code in (ord(word[0]), ord(word[0].upper()))
)  # code points a keyword can start with

# --- the normalised view -------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def fold(ch: str) -> str:
    """What one code point is in the scanned view ('' when it is removed)."""
    if ch == "\u00ad" or unicodedata.category(ch) == "Cf":
        return ""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        category = unicodedata.category(c)
        if category == "Cf":
            continue
        if category == "Zs":
            out.append(" ")
        elif category == "Pd" or c == "\u2212":
            out.append("-")
        elif category == "Nd":
            out.append(chr(48 + unicodedata.decimal(c)))
        else:
            out.append(c)
    return "".join(out)


def normalise(text: str) -> tuple[list[int], list[int]]:
    """(view, origin): the view's code points, and for each the index of the original code point it came from."""
    view: list[int] = []
    origin: list[int] = []
    for k, ch in enumerate(text):
        if ch < "\x80":
            view.append(ord(ch))
            origin.append(k)
            continue
        for c in fold(ch):
            view.append(ord(c))
            origin.append(k)
    return view, origin


def to_original(spans, origin):
    """View spans -> original spans; a span never starts before the previous one ends (an expanded code point
    split between two spans belongs to the first)."""
    out = []
    previous_end = 0
    for s, e, kind in spans:
        while s < e and origin[s] < previous_end:
            s += 1  # starts on a character the view holds, never on a removed one
        if s < e:
            out.append((origin[s], origin[e - 1] + 1, kind))
            previous_end = origin[e - 1] + 1
    return out


def _digit(c):
    return 48 <= c <= 57


def _upper(c):
    return 65 <= c <= 90


def _lower(c):
    return 97 <= c <= 122


def _alpha(c):
    return 65 <= c <= 90 or 97 <= c <= 122


def _alnum(c):
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122


def _word(c):
    return _alnum(c) or c == 95


def _hex(c):
    return 48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102


def _local(c):  # e-mail local part: alnum . _ % + -
    return _alnum(c) or c in (46, 95, 37, 43, 45)


def _token(c):  # secret token: alnum _ - + / = .
    return _alnum(c) or c in (95, 45, 43, 47, 61, 46)


def _numeric_prev_ok(b, i):
    # a card or phone does not continue a word, a number, a path or an amount
    if i == 0:
        return True
    p = b[i - 1]
    if p == 32 and i >= 2 and _digit(b[i - 2]):
        return False  # the middle of a spaced number
    return not (_word(p) or p in (46, 44, 45, 47, 43, 35, 64, 36))


def _hexnet_prev_ok(b, i):
    if i == 0:
        return True
    p = b[i - 1]
    return not (_word(p) or p in (58, 46, 45))


# --- EMAIL ---------------------------------------------------------------------------------


def _email(b, n, at):
    s = at
    while s > 0 and _local(b[s - 1]) and at - s < 64:
        s -= 1
    if s > 0 and _local(b[s - 1]):
        return -1, -1  # local part longer than 64
    while s < at and not _alnum(b[s]):
        s += 1
    if s == at:
        return -1, -1
    j = at + 1
    labels = 0
    last_start = last_end = j
    while True:
        k = j
        while k < n and (_alnum(b[k]) or b[k] == 45):
            k += 1
        if k == j:
            break
        labels += 1
        last_start, last_end = j, k
        if b[k] == 46 and _alnum(b[k + 1]):
            j = k + 1
            continue
        break
    if labels < 2 or b[at + 1] == 45 or last_end - at - 1 > 253 or last_end - last_start < 2:
        return -1, -1
    for k in range(last_start, last_end):
        if not (_upper(b[k]) or _lower(b[k])):
            return -1, -1
    return s, last_end


# --- IPV4 ----------------------------------------------------------------------------------


def _ipv4_core(b, n, i):
    j = i
    for octet in range(4):
        k = j
        value = 0
        while k < n and _digit(b[k]) and k - j < 4:
            value = value * 10 + b[k] - 48
            k += 1
        length = k - j
        if length == 0 or length > 3 or value > 255 or (length > 1 and b[j] == 48):
            return -1
        j = k
        if octet < 3:
            if b[j] != 46:
                return -1
            j += 1
    c = b[j]
    if _word(c) or (c == 46 and _digit(b[j + 1])):
        return -1
    return j


def _ipv4(b, n, i):
    if i > 0 and (_word(b[i - 1]) or b[i - 1] == 46):
        return -1
    return _ipv4_core(b, n, i)


# --- IPV6 ----------------------------------------------------------------------------------


def _ipv6(b, n, i):
    if not _hexnet_prev_ok(b, i):
        return -1
    j = i
    groups = 0
    double = leading = False
    end = i
    if b[j] == 58:
        if b[j + 1] != 58:
            return -1
        double = leading = True
        j += 2
        end = j
    while True:
        k = j
        while k < n and _hex(b[k]) and k - j < 5:
            k += 1
        length = k - j
        if length == 0:
            break
        if length > 4:
            return -1
        if b[k] == 46 and _digit(b[k + 1]):
            e = _ipv4_core(b, n, j)
            if e < 0 or groups + 2 > (7 if double else 8):
                return -1
            groups += 2
            end = e
            break
        groups += 1
        end = k
        if b[k] == 58 and b[k + 1] == 58:
            if double:
                return -1
            double = True
            j = k + 2
            end = j
            continue
        if b[k] == 58 and _hex(b[k + 1]):
            j = k + 1
            continue
        break
    if double:
        if groups > 7 or (groups < 2 and not (leading and groups == 1)):
            return -1
    elif groups != 8:
        return -1
    if _word(b[end]):
        return -1
    return end


# --- MAC -----------------------------------------------------------------------------------


def _mac(b, n, i):
    if not _hexnet_prev_ok(b, i):
        return -1
    end = -1
    sep = b[i + 2]
    if (sep == 58 or sep == 45) and i + 17 <= n:
        end = i + 17
        for g in range(6):
            if not (_hex(b[i + 3 * g]) and _hex(b[i + 3 * g + 1])):
                end = -1
                break
            if g < 5 and b[i + 3 * g + 2] != sep:
                end = -1
                break
    elif i + 14 <= n and b[i + 4] == 46 and b[i + 9] == 46:
        end = i + 14
        for k in range(i, i + 14):
            if (k - i) % 5 != 4 and not _hex(b[k]):
                end = -1
                break
    if end < 0:
        return -1
    c = b[end]
    if _word(c) or (c in (58, 45, 46) and _hex(b[end + 1])):
        return -1
    return end


# --- CARD ----------------------------------------------------------------------------------


def _luhn(digits, count):
    total = 0
    for k in range(count):
        d = digits[count - 1 - k]
        if k % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _maestro(digits):
    """Maestro issues 12-digit cards: IIN 50 or 56-69."""
    return (digits[0] == 5 and (digits[1] == 0 or 6 <= digits[1] <= 8)) or digits[0] == 6


def _card(b, n, i):
    if b[i] == 48 or not _numeric_prev_ok(b, i):
        return -1
    digits = []
    ends = []  # position after each group
    counts = []  # digits up to each group
    lengths = []
    sep = 0
    j = i
    while True:
        k = j
        while k < n and _digit(b[k]):
            digits.append(b[k] - 48)
            k += 1
            if len(digits) > 19:
                break
        if len(digits) > 19:
            break
        ends.append(k)
        counts.append(len(digits))
        lengths.append(k - j)
        c = b[k]
        if (c == 32 or c == 45) and (sep == 0 or c == sep) and _digit(b[k + 1]):
            sep = c
            j = k + 1
            continue
        break
    for g in range(len(ends) - 1, -1, -1):
        count = counts[g]
        if count < 12 or (count == 12 and not _maestro(digits)):
            break
        if count > 19:
            continue
        if g > 0:
            bad = lengths[g] > 6
            for h in range(g):
                if lengths[h] < 3 or lengths[h] > 6:
                    bad = True
            if bad:
                continue
        e = ends[g]
        c = b[e]
        if _word(c) or ((c == 46 or c == 44 or c == 45) and _digit(b[e + 1])):
            continue
        if _luhn(digits, count):
            return e
    return -1


# --- PHONE ---------------------------------------------------------------------------------


def _phone_valid(digits, count, lengths, parens, groups, plus):
    """Is the number made of the first `groups` groups (`count` digits) a phone number?"""
    trunk_paren = 0  # a '(0)' after a country code is not dialled
    after_trunk = False
    international = plus or (digits[0] == 0 and digits[1] == 0)
    start = 0
    for h in range(groups):
        if parens[h] and lengths[h] == 1 and digits[start] == 0:
            trunk_paren = 1
            after_trunk = True
        else:
            # one-digit groups: the first, an area code after a country code or after (0)
            if lengths[h] < 2 and not (h == 0 or after_trunk or (h == 1 and international)):
                return False
            after_trunk = False
        start += lengths[h]
    if plus:
        dialled = count - trunk_paren
        return 8 <= dialled <= 15 and digits[0] != 0
    if digits[0] == 0 and digits[1] == 0:
        dialled = count - 2 - trunk_paren
        return 8 <= dialled <= 15 and digits[2] != 0
    if digits[0] == 0:
        if trunk_paren:
            return False
        return 9 <= count <= (11 if groups == 1 else 12)
    if groups == 1 and digits[0] == 3 and 9 <= count <= 11:  # Italian mobile, no country code: 3xx then 6-8 digits
        return True
    if groups == 1 and count == 10:  # plain North American: area code and exchange 2-9
        return digits[0] >= 2 and digits[3] >= 2
    if groups == 3 and lengths[0] == 3 and lengths[1] == 3 and lengths[2] == 4:
        return digits[0] >= 2
    if groups == 4 and lengths[0] == 1 and lengths[1] == 3 and lengths[2] == 3 and lengths[3] == 4:
        return digits[0] == 1 and digits[1] >= 2
    return False


def _group_start(lengths, h):
    start = 0
    for k in range(h):
        start += lengths[k]
    return start


def _phone(b, n, i):
    if not _numeric_prev_ok(b, i):
        return -1
    j = i
    plus = False
    paren_used = paren_open = False
    if b[j] == 43:
        plus = True
        j += 1
        if not _digit(b[j]):
            return -1
    elif b[j] == 40:
        paren_used = paren_open = True
        j += 1
    digits = []
    lengths = []
    parens = []
    ends = []  # per group: end position when the number may stop there, else -1
    while True:
        k = j
        while k < n and _digit(b[k]) and len(digits) <= 17:
            digits.append(b[k] - 48)
            k += 1
        if k == j or len(digits) > 17:
            break
        lengths.append(k - j)
        parens.append(paren_open)
        g = k
        closed = opened = spaced = False
        if paren_open:
            if b[g] != 41:
                ends.append(-1)
                break
            paren_open = False
            closed = True
            ends.append(-1)
            g += 1
        else:
            ends.append(k)
        if b[g] == 32 or b[g] == 45 or b[g] == 46:
            spaced = True
            g += 1
        if b[g] == 40 and not paren_used:
            paren_used = paren_open = True
            opened = True
            g += 1
        if _digit(b[g]) and (closed or spaced or opened):
            j = g
            continue
        break
    for h in range(len(ends) - 1, -1, -1):
        e = ends[h]
        if e < 0:
            continue
        count = _group_start(lengths, h + 1)
        if count < 8:
            break
        c = b[e]
        extension = e
        if c == 120 and _digit(b[e + 1]):
            x = e + 1
            while _digit(b[x]) and x - e <= 7:
                x += 1
            if x - e <= 7 and not _word(b[x]):
                extension = x
        if extension == e and (_word(c) or ((c == 45 or c == 46) and _digit(b[e + 1]))):
            continue
        if _phone_valid(digits, count, lengths, parens, h + 1, plus):
            return extension
    return -1


# --- IBAN ----------------------------------------------------------------------------------


def _upper_case(c):
    return c - 32 if _lower(c) else c


def _iban(b, n, i):
    if i > 0 and _word(b[i - 1]):
        return -1
    if not (_alpha(b[i + 1]) and _digit(b[i + 2]) and _digit(b[i + 3])):
        return -1
    length = IBAN_LENGTHS.get(chr(_upper_case(b[i])) + chr(_upper_case(b[i + 1])), 0)
    if length == 0:
        return -1
    chars = []
    j = i
    while len(chars) < length:
        c = b[j]
        if _alpha(c) or _digit(c):
            chars.append(_upper_case(c))
            j += 1
        elif c == 32 and len(chars) % 4 == 0 and (_alpha(b[j + 1]) or _digit(b[j + 1])):
            j += 1
        else:
            return -1
    if _word(b[j]):
        return -1
    remainder = 0
    for k in range(length):
        c = chars[(k + 4) % length]
        if _digit(c):
            remainder = (remainder * 10 + c - 48) % 97
        else:
            remainder = (remainder * 100 + c - 55) % 97
    return j if remainder == 1 else -1


# --- SECRET --------------------------------------------------------------------------------


def _starts_with(b, s, e, word):
    if e - s < len(word):
        return False
    return all(b[s + k] == ord(word[k]) for k in range(len(word)))


def _ends_with_ci(b, s, e, word):
    if e - s < len(word):
        return False
    for k in range(len(word)):
        c = b[e - len(word) + k]
        if _upper(c):
            c += 32
        if c != ord(word[k]):
            return False
    return True


def _uuid_shaped(b, s, e):
    if e - s != 36:
        return False
    for k in range(36):
        c = b[s + k]
        if k in (8, 13, 18, 23):
            if c != 45:
                return False
        elif not _hex(c):
            return False
    return True


def _jwt(b, s, e):
    dots = []
    for k in range(s, e):
        if b[k] == 46:
            dots.append(k)
    if len(dots) != 2:
        return False
    return (
        dots[0] - s >= 10
        and dots[1] - dots[0] - 1 >= 10
        and e - dots[1] - 1 >= 10
        and _starts_with(b, dots[0] + 1, e, "eyJ")
    )


def _high_entropy(b, s, e):
    if e - s < SECRET_MIN_LENGTH or b[s] == 47:
        return False
    lower = upper = digit = not_hex = False
    for k in range(s, e):
        c = b[k]
        if _lower(c):
            lower = True
        elif _upper(c):
            upper = True
        elif _digit(c):
            digit = True
        if not (_hex(c) or c == 45):
            not_hex = True
    if not (lower and upper and digit and not_hex):
        return False
    # words (CamelCase, snake_case, paths) pair letters of one case; random tokens seldom do
    lower_pairs = upper_pairs = 0
    for k in range(s + 1, e):
        if _lower(b[k]) and _lower(b[k - 1]):
            lower_pairs += 1
        elif _upper(b[k]) and _upper(b[k - 1]):
            upper_pairs += 1
    if lower_pairs * 5 >= (e - s - 1) * 2 or upper_pairs * 5 >= (e - s - 1) * 2:
        return False
    window = min(e - s, ENTROPY_WINDOW)
    counts = [0] * 128
    for k in range(s, s + window):
        counts[b[k]] += 1
    spread = XLOGX[window]
    for c in range(128):
        spread -= XLOGX[counts[c]]
    # entropy = spread / (1024 * window) bits per character
    return spread * 2 >= int(ENTROPY_BITS * 2) * 1024 * window


def _secret(b, n, s, e):
    """The SECRET span inside the token run b[s:e], or (-1, -1)."""
    run_start = s
    while e > s and b[e - 1] == 46:
        e -= 1
    while s < e and b[s] == 46:
        s += 1
    if e - s < CONTEXT_MIN_LENGTH:
        return -1, -1
    if (
        run_start >= 7
        and _starts_with(b, run_start - 7, run_start, "Bearer ")
        and (run_start == 7 or not _word(b[run_start - 8]))
    ):
        return s, e
    for q in range(s + 1, e - 1):
        if b[q] == 61 and b[q + 1] != 61:
            for name in SECRET_KEY_NAMES:
                if _ends_with_ci(b, s, q, name):
                    if e - q - 1 >= CONTEXT_MIN_LENGTH and not _uuid_shaped(b, q + 1, e):
                        return q + 1, e
                    return -1, -1
            s = q + 1
            break
    for prefix, rest in SECRET_PREFIXES:
        if _starts_with(b, s, e, prefix):
            if e - s - len(prefix) >= rest:
                return s, e
            return -1, -1
    if (_starts_with(b, s, e, "AKIA") or _starts_with(b, s, e, "ASIA")) and e - s == 20:
        ok = True
        for k in range(s + 4, e):
            if not (_upper(b[k]) or _digit(b[k])):
                ok = False
        if ok:
            return s, e
    if _starts_with(b, s, e, "eyJ") and _jwt(b, s, e):
        return s, e
    if _high_entropy(b, s, e):
        return s, e
    return -1, -1


# --- SECRET after a keyword ---------------------------------------------------------------

# as code points, longest first ("pin code" before "pin"); the compiled twin reads these tables too
KEYWORD_CODES = tuple(tuple(map(ord, word)) for word in sorted(SECRET_KEYWORDS, key=len, reverse=True))
COPULA_CODES = tuple(tuple(map(ord, word)) for word in sorted(COPULAS, key=len, reverse=True))
STOPWORD_CODES = tuple(tuple(map(ord, word)) for word in COPULA_STOPWORDS)
_OPEN_QUOTES = frozenset(map(ord, OPEN_QUOTES))
_CLOSE_QUOTES = frozenset(map(ord, CLOSE_QUOTES))
_APOSTROPHES = frozenset(map(ord, APOSTROPHES))
_VALUE_TRAILING = frozenset(map(ord, VALUE_TRAILING))
_VALUE_ENDS = frozenset(map(ord, VALUE_ENDS))


def _letter(c):
    """A word character for keyword boundaries: ASCII alnum, '_', or any Unicode letter."""
    return _word(c) or (c >= 128 and chr(c).isalpha())


def _space(c):
    return c == 32 or c == 9


def _lower_case(c):
    if _upper(c):
        return c + 32
    return KEYWORD_CASE.get(c, c)


def _word_at(b, i, word):
    """The end of `word` matched case-insensitively at i and not followed by a letter, or -1."""
    j = i
    for w in word:
        c = b[j]
        if w == 32:
            if not _space(c):
                return -1
            while _space(b[j + 1]):
                j += 1
        elif w == 39:
            if c not in _APOSTROPHES:
                return -1
        elif _lower_case(c) != w:
            return -1
        j += 1
    return -1 if _letter(b[j]) else j


def _value_end(b, n, k, memo):
    """(end, last digit) of the unquoted value starting at k: end is before trailing punctuation, the last digit is
    the position of the last digit before it (< k: none). `memo` [from, run end, stripped end, last digit] holds
    the previous answer, still true for any k in [from, run end]: keywords after keywords ("password:password:...",
    no space) share one value run, and each is looked at once, so the scan stays linear."""
    if not memo[0] <= k <= memo[1]:
        e = k
        while e < n and b[e] not in _VALUE_ENDS:
            e += 1
        p = e
        while p > k and b[p - 1] in _VALUE_TRAILING:
            p -= 1
        d = p - 1
        while d >= k and not _digit(b[d]):
            d -= 1
        memo[:] = [k, e, p, d]
    return max(memo[2], k), memo[3]


def _keyword_value(b, n, i, memo):
    """(start, end) of the secret value given after a keyword at i, or (-1, -1)."""
    j = -1
    for word in KEYWORD_CODES:
        j = _word_at(b, i, word)
        if j >= 0:
            break
    if j < 0:
        return -1, -1
    k = j
    while _space(b[k]):
        k += 1
    copula = bare = False
    if b[k] == 58 or b[k] == 61:  # ':' '='
        k += 1
        while _space(b[k]):
            k += 1
    elif k > j:
        for word in COPULA_CODES:
            m = _word_at(b, k, word)
            if m >= 0 and _space(b[m]):
                copula = True
                k = m
                while _space(b[k]):
                    k += 1
                break
        bare = not copula
    else:
        return -1, -1
    if b[k] in _OPEN_QUOTES:
        q = k + 1
        while q < n and q - k <= QUOTED_MAX and b[q] != 10 and b[q] not in _CLOSE_QUOTES:
            q += 1
        if q < n and q - k <= QUOTED_MAX and b[q] in _CLOSE_QUOTES and q > k + 1:
            return k + 1, q
        k += 1
    e, last_digit = _value_end(b, n, k, memo)
    if e == k:
        return -1, -1
    if bare and (e - k < 4 or last_digit < k):
        return -1, -1  # `keyword value` only when the value looks like a secret
    if copula:
        for word in STOPWORD_CODES:
            if _word_at(b, k, word) == e:
                return -1, -1
    return k, e


# --- the pass ------------------------------------------------------------------------------


def _candidates(b, n):
    found = []
    run_end = 0
    value_memo = [1, 0, 0, 0]  # _value_end's: empty
    for i in range(n):
        c = b[i]
        if c == 64:
            s, e = _email(b, n, i)
            if s >= 0:
                found.append((EMAIL, s, e))
        if i >= run_end and _token(c):
            run_end = i + 1
            while run_end < n and _token(b[run_end]):
                run_end += 1
            s, e = _secret(b, n, i, run_end)
            if s >= 0:
                found.append((SECRET, s, e))
        p = b[i - 1] if i > 0 else 0
        if _word(p):
            continue
        if c in KEYWORD_FIRST and not (p >= 128 and chr(p).isalpha()):
            s, e = _keyword_value(b, n, i, value_memo)
            if s >= 0:
                found.append((SECRET, s, e))
        if _alpha(c):
            e = _iban(b, n, i)
            if e >= 0:
                found.append((IBAN, i, e))
        if _digit(c):
            e = _card(b, n, i)
            if e >= 0:
                found.append((CARD, i, e))
            e = _ipv4(b, n, i)
            if e >= 0:
                found.append((IPV4, i, e))
        if _digit(c) or c == 43 or c == 40:
            e = _phone(b, n, i)
            if e >= 0:
                found.append((PHONE, i, e))
        if _hex(c) or c == 58:
            e = _ipv6(b, n, i)
            if e >= 0:
                found.append((IPV6, i, e))
            if c != 58:
                e = _mac(b, n, i)
                if e >= 0:
                    found.append((MAC, i, e))
    return found


def scan(text: str) -> list[tuple[int, int, str]]:
    if not isinstance(text, str):
        raise TypeError(f"scan() needs a str, not {type(text).__name__}")
    if text.isascii():
        return _scan([ord(c) for c in text])
    view, origin = normalise(text)
    return to_original(_scan(view), origin)


def _scan(codes: list[int]) -> list[tuple[int, int, str]]:
    n = len(codes)
    b = codes + [0] * PAD
    found = _candidates(b, n)
    found.sort()
    taken = bytearray(n)
    kept = []
    for kind, s, e in found:
        if taken.find(1, s, e) < 0:
            taken[s:e] = b"\x01" * (e - s)
            kept.append((s, e, KINDS[kind]))
    kept.sort()
    return kept
