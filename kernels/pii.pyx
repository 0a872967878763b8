"""PII scanner (compiled twin of edge_runtime/kernels/pure/pii.py).

Same state machine and rules as the pure twin (see its docstring): the text is copied once
into a zero-padded UCS4 (uint32) buffer, then one nogil pass collects candidate spans into a C array,
validates them in C (Luhn, mod-97, octets, entropy, keyword values) and settles conflicts by kind priority.
ASCII text is copied as it is; other text is folded into the normalised view while it is copied, one
code point at a time through a per-code-point cache of the pure twin's `fold` (BMP: two C tables,
filled on first sight), and the spans are mapped back through the view's origin array.
"""
cimport cython
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.stdint cimport uint32_t
from libc.string cimport memset

from edge_runtime.kernels.pure.pii import (
    APOSTROPHES, CLOSE_QUOTES, CONTEXT_MIN_LENGTH, COPULA_CODES, ENTROPY_BITS, ENTROPY_WINDOW, IBAN_LENGTHS,
    KEYWORD_CASE, KEYWORD_CODES, KEYWORD_FIRST, KINDS, OPEN_QUOTES, PAD, QUOTED_MAX, SECRET_KEY_NAMES,
    SECRET_MIN_LENGTH, SECRET_PREFIXES, STOPWORD_CODES, VALUE_ENDS, VALUE_TRAILING, XLOGX, fold,
)

cdef extern from "Python.h":
    Py_UCS4* PyUnicode_AsUCS4(object u, Py_UCS4* buffer, Py_ssize_t buflen, int copy_null) except NULL
    bint Py_UNICODE_ISALPHA(Py_UCS4 ch) nogil

ctypedef const uint32_t* Buf

cdef enum:
    K_EMAIL, K_IBAN, K_CARD, K_IPV6, K_MAC, K_IPV4, K_PHONE, K_SECRET
    MAX_WORD = 16
    MAX_WORDS = 32
    WINDOW = 1024
    KW_MAX = 24  # characters in a keyword, copula or stopword
    KW_WORDS = 128
    SET_MAX = 32  # members of a small character set
    BMP = 65536
    FOLD_UNKNOWN = 0
    FOLD_ONE = 1
    FOLD_REMOVED = 2
    FOLD_SEVERAL = 3

cdef struct Cand:
    Py_ssize_t kind
    Py_ssize_t s
    Py_ssize_t e

cdef struct Cands:
    Cand* items
    Py_ssize_t size
    Py_ssize_t cap
    int failed

# tables filled at import from the pure twin, so both read the same rules
cdef int iban_length[26][26]
cdef uint32_t prefix_text[MAX_WORDS][MAX_WORD]
cdef Py_ssize_t prefix_len[MAX_WORDS]
cdef Py_ssize_t prefix_rest[MAX_WORDS]
cdef Py_ssize_t n_prefixes = 0
cdef uint32_t keyname_text[MAX_WORDS][MAX_WORD]
cdef Py_ssize_t keyname_len[MAX_WORDS]
cdef Py_ssize_t n_keynames = 0
cdef long long xlogx[WINDOW + 1]
cdef Py_ssize_t c_pad = PAD
cdef Py_ssize_t secret_min = SECRET_MIN_LENGTH
cdef Py_ssize_t context_min = CONTEXT_MIN_LENGTH
cdef long long entropy_twice = int(ENTROPY_BITS * 2)

assert ENTROPY_WINDOW == WINDOW and len(XLOGX) == WINDOW + 1
memset(iban_length, 0, sizeof(iban_length))
for _code, _length in IBAN_LENGTHS.items():
    iban_length[ord(_code[0]) - 65][ord(_code[1]) - 65] = _length
for _word_, _rest in SECRET_PREFIXES:
    for _k, _ch in enumerate(_word_):
        prefix_text[n_prefixes][_k] = ord(_ch)
    prefix_len[n_prefixes] = len(_word_)
    prefix_rest[n_prefixes] = _rest
    n_prefixes += 1
for _word_ in SECRET_KEY_NAMES:
    for _k, _ch in enumerate(_word_):
        keyname_text[n_keynames][_k] = ord(_ch)
    keyname_len[n_keynames] = len(_word_)
    n_keynames += 1
for _k, _v in enumerate(XLOGX):
    xlogx[_k] = _v

# keyword secrets: the pure twin's tables as C arrays
cdef struct Words:
    uint32_t text[KW_WORDS][KW_MAX]
    Py_ssize_t length[KW_WORDS]
    Py_ssize_t count

cdef struct CharSet:
    uint32_t items[SET_MAX]
    Py_ssize_t count

cdef Words keywords, copulas, stopwords
cdef CharSet open_quotes, close_quotes, apostrophes, value_trailing, value_ends, case_upper, case_lower
cdef CharSet first_other  # non-ASCII code points a keyword can start with
cdef bint first_ascii[128]
# the keywords starting with each ASCII letter, in KEYWORD_CODES order (the first that matches wins)
cdef Py_ssize_t by_first[128][KW_WORDS]
cdef Py_ssize_t by_first_count[128]
cdef Py_ssize_t quoted_max = QUOTED_MAX

cdef void fill_words(Words* words, codes):
    assert len(codes) <= KW_WORDS
    words.count = 0
    for _word_ in codes:
        assert len(_word_) <= KW_MAX
        for _k, _c in enumerate(_word_):
            words.text[words.count][_k] = _c
        words.length[words.count] = len(_word_)
        words.count += 1

cdef void fill_set(CharSet* chars, codes):
    assert len(codes) <= SET_MAX
    chars.count = 0
    for _c in codes:
        chars.items[chars.count] = _c
        chars.count += 1

fill_words(&keywords, KEYWORD_CODES)
fill_words(&copulas, COPULA_CODES)
fill_words(&stopwords, STOPWORD_CODES)
fill_set(&open_quotes, [ord(_ch) for _ch in OPEN_QUOTES])
fill_set(&close_quotes, [ord(_ch) for _ch in CLOSE_QUOTES])
fill_set(&apostrophes, [ord(_ch) for _ch in APOSTROPHES])
fill_set(&value_trailing, [ord(_ch) for _ch in VALUE_TRAILING])
fill_set(&value_ends, [ord(_ch) for _ch in VALUE_ENDS])
fill_set(&case_upper, list(KEYWORD_CASE.keys()))
fill_set(&case_lower, list(KEYWORD_CASE.values()))
fill_set(&first_other, sorted(_c for _c in KEYWORD_FIRST if _c >= 128))
memset(first_ascii, 0, sizeof(first_ascii))
memset(by_first_count, 0, sizeof(by_first_count))
for _k, _word_ in enumerate(KEYWORD_CODES):
    if _word_[0] < 128:
        by_first[_word_[0]][by_first_count[_word_[0]]] = _k
        by_first_count[_word_[0]] += 1
for _c in KEYWORD_FIRST:
    if _c < 128:
        first_ascii[_c] = True

# the normalised view: per BMP code point, what `fold` makes of it (learnt on first sight)
cdef unsigned char fold_state[BMP]
cdef uint32_t fold_one[BMP]
memset(fold_state, FOLD_UNKNOWN, sizeof(fold_state))


cdef inline bint is_digit(uint32_t c) noexcept nogil:
    return 48 <= c <= 57

cdef inline bint is_upper(uint32_t c) noexcept nogil:
    return 65 <= c <= 90

cdef inline bint is_lower(uint32_t c) noexcept nogil:
    return 97 <= c <= 122

cdef inline bint is_alpha(uint32_t c) noexcept nogil:
    return (65 <= c <= 90) or (97 <= c <= 122)

cdef inline uint32_t upper_case(uint32_t c) noexcept nogil:
    return c - 32 if is_lower(c) else c

cdef inline bint is_alnum(uint32_t c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)

cdef inline bint is_word(uint32_t c) noexcept nogil:
    return is_alnum(c) or c == 95

cdef inline bint is_hex(uint32_t c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102)

cdef inline bint is_local(uint32_t c) noexcept nogil:
    return is_alnum(c) or c == 46 or c == 95 or c == 37 or c == 43 or c == 45

cdef inline bint is_token(uint32_t c) noexcept nogil:
    return is_alnum(c) or c == 95 or c == 45 or c == 43 or c == 47 or c == 61 or c == 46

cdef inline bint numeric_prev_ok(Buf b, Py_ssize_t i) noexcept nogil:
    if i == 0:
        return True
    cdef uint32_t p = b[i - 1]
    if p == 32 and i >= 2 and is_digit(b[i - 2]):
        return False
    return not (is_word(p) or p == 46 or p == 44 or p == 45 or p == 47 or p == 43
                or p == 35 or p == 64 or p == 36)

cdef inline bint hexnet_prev_ok(Buf b, Py_ssize_t i) noexcept nogil:
    if i == 0:
        return True
    cdef uint32_t p = b[i - 1]
    return not (is_word(p) or p == 58 or p == 46 or p == 45)


# --- EMAIL ---------------------------------------------------------------------------------

cdef Py_ssize_t m_email(Buf b, Py_ssize_t n, Py_ssize_t at, Py_ssize_t* start) noexcept nogil:
    cdef Py_ssize_t s = at, j, k, labels = 0, last_start, last_end
    while s > 0 and is_local(b[s - 1]) and at - s < 64:
        s -= 1
    if s > 0 and is_local(b[s - 1]):
        return -1
    while s < at and not is_alnum(b[s]):
        s += 1
    if s == at:
        return -1
    j = at + 1
    last_start = j
    last_end = j
    while True:
        k = j
        while k < n and (is_alnum(b[k]) or b[k] == 45):
            k += 1
        if k == j:
            break
        labels += 1
        last_start = j
        last_end = k
        if b[k] == 46 and is_alnum(b[k + 1]):
            j = k + 1
            continue
        break
    if labels < 2 or b[at + 1] == 45 or last_end - at - 1 > 253 or last_end - last_start < 2:
        return -1
    for k in range(last_start, last_end):
        if not (is_upper(b[k]) or is_lower(b[k])):
            return -1
    start[0] = s
    return last_end


# --- IPV4 / IPV6 / MAC ---------------------------------------------------------------------

cdef Py_ssize_t ipv4_core(Buf b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t j = i, k, length, octet
    cdef long value
    cdef uint32_t c
    for octet in range(4):
        k = j
        value = 0
        while k < n and is_digit(b[k]) and k - j < 4:
            value = value * 10 + <long>b[k] - 48
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
    if is_word(c) or (c == 46 and is_digit(b[j + 1])):
        return -1
    return j

cdef Py_ssize_t m_ipv4(Buf b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    if i > 0 and (is_word(b[i - 1]) or b[i - 1] == 46):
        return -1
    return ipv4_core(b, n, i)

cdef Py_ssize_t m_ipv6(Buf b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    if not hexnet_prev_ok(b, i):
        return -1
    cdef Py_ssize_t j = i, k, length, groups = 0, end = i, e
    cdef bint double = False, leading = False
    if b[j] == 58:
        if b[j + 1] != 58:
            return -1
        double = True
        leading = True
        j += 2
        end = j
    while True:
        k = j
        while k < n and is_hex(b[k]) and k - j < 5:
            k += 1
        length = k - j
        if length == 0:
            break
        if length > 4:
            return -1
        if b[k] == 46 and is_digit(b[k + 1]):
            e = ipv4_core(b, n, j)
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
        if b[k] == 58 and is_hex(b[k + 1]):
            j = k + 1
            continue
        break
    if double:
        if groups > 7 or (groups < 2 and not (leading and groups == 1)):
            return -1
    elif groups != 8:
        return -1
    if is_word(b[end]):
        return -1
    return end

cdef Py_ssize_t m_mac(Buf b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    if not hexnet_prev_ok(b, i):
        return -1
    cdef Py_ssize_t end = -1, g, k
    cdef uint32_t sep = b[i + 2], c
    if (sep == 58 or sep == 45) and i + 17 <= n:
        end = i + 17
        for g in range(6):
            if not (is_hex(b[i + 3 * g]) and is_hex(b[i + 3 * g + 1])):
                end = -1
                break
            if g < 5 and b[i + 3 * g + 2] != sep:
                end = -1
                break
    elif i + 14 <= n and b[i + 4] == 46 and b[i + 9] == 46:
        end = i + 14
        for k in range(i, i + 14):
            if (k - i) % 5 != 4 and not is_hex(b[k]):
                end = -1
                break
    if end < 0:
        return -1
    c = b[end]
    if is_word(c) or ((c == 58 or c == 45 or c == 46) and is_hex(b[end + 1])):
        return -1
    return end


# --- CARD ----------------------------------------------------------------------------------

cdef bint luhn(const int* digits, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t k
    cdef int total = 0, d
    for k in range(count):
        d = digits[count - 1 - k]
        if k % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0

cdef inline bint maestro(const int* digits) noexcept nogil:
    # Maestro issues 12-digit cards: IIN 50 or 56-69
    return (digits[0] == 5 and (digits[1] == 0 or 6 <= digits[1] <= 8)) or digits[0] == 6


cdef Py_ssize_t m_card(Buf b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    if b[i] == 48 or not numeric_prev_ok(b, i):
        return -1
    cdef int digits[24]
    cdef Py_ssize_t ends[24]
    cdef Py_ssize_t counts[24]
    cdef Py_ssize_t lengths[24]
    cdef Py_ssize_t nd = 0, ng = 0, j = i, k, g, h, count, e
    cdef uint32_t sep = 0, c
    cdef bint bad
    while True:
        k = j
        while k < n and is_digit(b[k]):
            digits[nd] = <int>b[k] - 48
            nd += 1
            k += 1
            if nd > 19:
                break
        if nd > 19:
            break
        ends[ng] = k
        counts[ng] = nd
        lengths[ng] = k - j
        ng += 1
        c = b[k]
        if (c == 32 or c == 45) and (sep == 0 or c == sep) and is_digit(b[k + 1]):
            sep = c
            j = k + 1
            continue
        break
    for g in range(ng - 1, -1, -1):
        count = counts[g]
        if count < 12 or (count == 12 and not maestro(digits)):
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
        if is_word(c) or ((c == 46 or c == 44 or c == 45) and is_digit(b[e + 1])):
            continue
        if luhn(digits, count):
            return e
    return -1


# --- PHONE ---------------------------------------------------------------------------------

cdef bint phone_valid(const int* digits, Py_ssize_t count, const Py_ssize_t* lengths,
                      const bint* parens, Py_ssize_t groups, bint plus) noexcept nogil:
    cdef int trunk_paren = 0
    cdef bint after_trunk = False
    cdef bint international = plus or (digits[0] == 0 and digits[1] == 0)
    cdef Py_ssize_t h, start = 0, dialled
    for h in range(groups):
        if parens[h] and lengths[h] == 1 and digits[start] == 0:
            trunk_paren = 1
            after_trunk = True
        else:
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
    if groups == 1 and count == 10:
        return digits[0] >= 2 and digits[3] >= 2
    if groups == 3 and lengths[0] == 3 and lengths[1] == 3 and lengths[2] == 4:
        return digits[0] >= 2
    if groups == 4 and lengths[0] == 1 and lengths[1] == 3 and lengths[2] == 3 and lengths[3] == 4:
        return digits[0] == 1 and digits[1] >= 2
    return False

cdef Py_ssize_t m_phone(Buf b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    if not numeric_prev_ok(b, i):
        return -1
    cdef int digits[24]
    cdef Py_ssize_t lengths[24]
    cdef bint parens[24]
    cdef Py_ssize_t ends[24]
    cdef Py_ssize_t nd = 0, ng = 0, j = i, k, g, h, e, x, count, extension
    cdef bint plus = False, paren_used = False, paren_open = False
    cdef bint closed, opened, spaced
    cdef uint32_t c
    if b[j] == 43:
        plus = True
        j += 1
        if not is_digit(b[j]):
            return -1
    elif b[j] == 40:
        paren_used = True
        paren_open = True
        j += 1
    while True:
        k = j
        while k < n and is_digit(b[k]) and nd <= 17:
            digits[nd] = <int>b[k] - 48
            nd += 1
            k += 1
        if k == j or nd > 17:
            break
        lengths[ng] = k - j
        parens[ng] = paren_open
        g = k
        closed = False
        opened = False
        spaced = False
        if paren_open:
            if b[g] != 41:
                ends[ng] = -1
                ng += 1
                break
            paren_open = False
            closed = True
            ends[ng] = -1
            g += 1
        else:
            ends[ng] = k
        ng += 1
        if b[g] == 32 or b[g] == 45 or b[g] == 46:
            spaced = True
            g += 1
        if b[g] == 40 and not paren_used:
            paren_used = True
            paren_open = True
            opened = True
            g += 1
        if is_digit(b[g]) and (closed or spaced or opened):
            j = g
            continue
        break
    count = 0
    for h in range(ng):
        count += lengths[h]
    for h in range(ng - 1, -1, -1):
        if h < ng - 1:
            count -= lengths[h + 1]
        e = ends[h]
        if e < 0:
            continue
        if count < 8:
            break
        c = b[e]
        extension = e
        if c == 120 and is_digit(b[e + 1]):
            x = e + 1
            while is_digit(b[x]) and x - e <= 7:
                x += 1
            if x - e <= 7 and not is_word(b[x]):
                extension = x
        if extension == e and (is_word(c) or ((c == 45 or c == 46) and is_digit(b[e + 1]))):
            continue
        if phone_valid(digits, count, lengths, parens, h + 1, plus):
            return extension
    return -1


# --- IBAN ----------------------------------------------------------------------------------

cdef Py_ssize_t m_iban(Buf b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    if i > 0 and is_word(b[i - 1]):
        return -1
    if not (is_alpha(b[i + 1]) and is_digit(b[i + 2]) and is_digit(b[i + 3])):
        return -1
    cdef Py_ssize_t length = iban_length[upper_case(b[i]) - 65][upper_case(b[i + 1]) - 65], count = 0, j = i, k
    cdef uint32_t chars[40]
    cdef uint32_t c
    cdef int remainder = 0
    if length == 0:
        return -1
    while count < length:
        c = b[j]
        if is_alpha(c) or is_digit(c):
            chars[count] = upper_case(c)
            count += 1
            j += 1
        elif c == 32 and count % 4 == 0 and (is_alpha(b[j + 1]) or is_digit(b[j + 1])):
            j += 1
        else:
            return -1
    if is_word(b[j]):
        return -1
    for k in range(length):
        c = chars[(k + 4) % length]
        if is_digit(c):
            remainder = (remainder * 10 + <int>c - 48) % 97
        else:
            remainder = (remainder * 100 + <int>c - 55) % 97
    return j if remainder == 1 else -1


# --- SECRET --------------------------------------------------------------------------------

cdef bint starts_with(Buf b, Py_ssize_t s, Py_ssize_t e, const uint32_t* word,
                      Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t k
    if e - s < length:
        return False
    for k in range(length):
        if b[s + k] != word[k]:
            return False
    return True

cdef bint ends_with_ci(Buf b, Py_ssize_t s, Py_ssize_t e, const uint32_t* word,
                       Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint32_t c
    if e - s < length:
        return False
    for k in range(length):
        c = b[e - length + k]
        if is_upper(c):
            c += 32
        if c != word[k]:
            return False
    return True

cdef bint uuid_shaped(Buf b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint32_t c
    if e - s != 36:
        return False
    for k in range(36):
        c = b[s + k]
        if k == 8 or k == 13 or k == 18 or k == 23:
            if c != 45:
                return False
        elif not is_hex(c):
            return False
    return True

cdef uint32_t EYJ[3]
EYJ[:] = [ord("e"), ord("y"), ord("J")]
cdef uint32_t BEARER[7]
BEARER[:] = [ord(ch) for ch in "Bearer "]
cdef uint32_t AKIA[4]
AKIA[:] = [ord(ch) for ch in "AKIA"]
cdef uint32_t ASIA[4]
ASIA[:] = [ord(ch) for ch in "ASIA"]

cdef bint jwt(Buf b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    cdef Py_ssize_t k, ndots = 0
    cdef Py_ssize_t dots[2]
    for k in range(s, e):
        if b[k] == 46:
            if ndots == 2:
                return False
            dots[ndots] = k
            ndots += 1
    if ndots != 2:
        return False
    return (dots[0] - s >= 10 and dots[1] - dots[0] - 1 >= 10 and e - dots[1] - 1 >= 10
            and starts_with(b, dots[0] + 1, e, EYJ, 3))

cdef bint high_entropy(Buf b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    if e - s < secret_min or b[s] == 47:
        return False
    cdef bint lower = False, upper = False, digit = False, not_hex = False
    cdef Py_ssize_t k, lower_pairs = 0, upper_pairs = 0, window
    cdef uint32_t c
    cdef long long spread
    cdef int counts[128]
    for k in range(s, e):
        c = b[k]
        if is_lower(c):
            lower = True
        elif is_upper(c):
            upper = True
        elif is_digit(c):
            digit = True
        if not (is_hex(c) or c == 45):
            not_hex = True
    if not (lower and upper and digit and not_hex):
        return False
    for k in range(s + 1, e):
        if is_lower(b[k]) and is_lower(b[k - 1]):
            lower_pairs += 1
        elif is_upper(b[k]) and is_upper(b[k - 1]):
            upper_pairs += 1
    if lower_pairs * 5 >= (e - s - 1) * 2 or upper_pairs * 5 >= (e - s - 1) * 2:
        return False
    window = e - s if e - s < WINDOW else WINDOW
    memset(counts, 0, sizeof(counts))
    for k in range(s, s + window):
        counts[b[k]] += 1
    spread = xlogx[window]
    for k in range(128):
        spread -= xlogx[counts[k]]
    return spread * 2 >= entropy_twice * 1024 * window

cdef Py_ssize_t m_secret(Buf b, Py_ssize_t n, Py_ssize_t s, Py_ssize_t e,
                         Py_ssize_t* start) noexcept nogil:
    cdef Py_ssize_t run_start = s, q, w, k
    cdef bint ok
    while e > s and b[e - 1] == 46:
        e -= 1
    while s < e and b[s] == 46:
        s += 1
    if e - s < context_min:
        return -1
    if run_start >= 7 and starts_with(b, run_start - 7, run_start, BEARER, 7) and (
            run_start == 7 or not is_word(b[run_start - 8])):
        start[0] = s
        return e
    for q in range(s + 1, e - 1):
        if b[q] == 61 and b[q + 1] != 61:
            for w in range(n_keynames):
                if ends_with_ci(b, s, q, keyname_text[w], keyname_len[w]):
                    if e - q - 1 >= context_min and not uuid_shaped(b, q + 1, e):
                        start[0] = q + 1
                        return e
                    return -1
            s = q + 1
            break
    for w in range(n_prefixes):
        if starts_with(b, s, e, prefix_text[w], prefix_len[w]):
            if e - s - prefix_len[w] >= prefix_rest[w]:
                start[0] = s
                return e
            return -1
    if (starts_with(b, s, e, AKIA, 4) or starts_with(b, s, e, ASIA, 4)) and e - s == 20:
        ok = True
        for k in range(s + 4, e):
            if not (is_upper(b[k]) or is_digit(b[k])):
                ok = False
        if ok:
            start[0] = s
            return e
    if starts_with(b, s, e, EYJ, 3) and jwt(b, s, e):
        start[0] = s
        return e
    if high_entropy(b, s, e):
        start[0] = s
        return e
    return -1


# --- SECRET after a keyword ---------------------------------------------------------------

cdef inline bint in_set(uint32_t c, const CharSet* chars) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(chars.count):
        if chars.items[k] == c:
            return True
    return False

cdef inline bint is_letter(uint32_t c) noexcept nogil:
    return is_word(c) or (c >= 128 and Py_UNICODE_ISALPHA(c))

cdef inline bint is_space(uint32_t c) noexcept nogil:
    return c == 32 or c == 9

cdef inline bint keyword_first(uint32_t c) noexcept nogil:
    if c < 128:
        return first_ascii[c]
    return in_set(c, &first_other)

cdef inline uint32_t lower_case(uint32_t c) noexcept nogil:
    cdef Py_ssize_t k
    if is_upper(c):
        return c + 32
    if c >= 128:
        for k in range(case_upper.count):
            if case_upper.items[k] == c:
                return case_lower.items[k]
    return c

cdef Py_ssize_t word_at(Buf b, Py_ssize_t i, const uint32_t* word, Py_ssize_t length) noexcept nogil:
    """The end of `word` matched case-insensitively at i and not followed by a letter, or -1."""
    cdef Py_ssize_t j = i, x
    cdef uint32_t w, c
    for x in range(length):
        w = word[x]
        c = b[j]
        if w == 32:
            if not is_space(c):
                return -1
            while is_space(b[j + 1]):
                j += 1
        elif w == 39:
            if not in_set(c, &apostrophes):
                return -1
        elif lower_case(c) != w:
            return -1
        j += 1
    return -1 if is_letter(b[j]) else j

cdef struct ValueMemo:  # see the pure twin's _value_end
    Py_ssize_t start
    Py_ssize_t run_end
    Py_ssize_t stripped
    Py_ssize_t last_digit

cdef Py_ssize_t value_end(Buf b, Py_ssize_t n, Py_ssize_t k, ValueMemo* memo,
                          Py_ssize_t* last_digit) noexcept nogil:
    cdef Py_ssize_t e, p, d
    if not (memo.start <= k <= memo.run_end):
        e = k
        while e < n and not in_set(b[e], &value_ends):
            e += 1
        p = e
        while p > k and in_set(b[p - 1], &value_trailing):
            p -= 1
        d = p - 1
        while d >= k and not is_digit(b[d]):
            d -= 1
        memo.start = k
        memo.run_end = e
        memo.stripped = p
        memo.last_digit = d
    last_digit[0] = memo.last_digit
    return memo.stripped if memo.stripped > k else k

cdef Py_ssize_t m_keyword(Buf b, Py_ssize_t n, Py_ssize_t i, Py_ssize_t* start,
                          ValueMemo* memo) noexcept nogil:
    cdef Py_ssize_t j = -1, k, m, q, e, w, x, last_digit
    cdef bint copula = False, bare = False
    cdef uint32_t first = lower_case(b[i]), second = lower_case(b[i + 1])
    if first < 128:  # only the keywords with this first letter can match
        for x in range(by_first_count[first]):
            w = by_first[first][x]
            if second != keywords.text[w][1] and is_lower(keywords.text[w][1]):
                continue  # the common miss, without the call
            j = word_at(b, i, keywords.text[w], keywords.length[w])
            if j >= 0:
                break
    else:
        for w in range(keywords.count):
            j = word_at(b, i, keywords.text[w], keywords.length[w])
            if j >= 0:
                break
    if j < 0:
        return -1
    k = j
    while is_space(b[k]):
        k += 1
    if b[k] == 58 or b[k] == 61:
        k += 1
        while is_space(b[k]):
            k += 1
    elif k > j:
        for w in range(copulas.count):
            m = word_at(b, k, copulas.text[w], copulas.length[w])
            if m >= 0 and is_space(b[m]):
                copula = True
                k = m
                while is_space(b[k]):
                    k += 1
                break
        bare = not copula
    else:
        return -1
    if in_set(b[k], &open_quotes):
        q = k + 1
        while q < n and q - k <= quoted_max and b[q] != 10 and not in_set(b[q], &close_quotes):
            q += 1
        if q < n and q - k <= quoted_max and in_set(b[q], &close_quotes) and q > k + 1:
            start[0] = k + 1
            return q
        k += 1
    e = value_end(b, n, k, memo, &last_digit)
    if e == k:
        return -1
    if bare and (e - k < 4 or last_digit < k):
        return -1
    if copula:
        for w in range(stopwords.count):
            if word_at(b, k, stopwords.text[w], stopwords.length[w]) == e:
                return -1
    start[0] = k
    return e


# --- the pass ------------------------------------------------------------------------------

cdef inline void push(Cands* out, Py_ssize_t kind, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    cdef Cand* grown
    if out.size == out.cap:
        grown = <Cand*>realloc(out.items, (out.cap * 2 + 16) * sizeof(Cand))
        if grown == NULL:
            out.failed = 1
            return
        out.items = grown
        out.cap = out.cap * 2 + 16
    out.items[out.size].kind = kind
    out.items[out.size].s = s
    out.items[out.size].e = e
    out.size += 1

cdef void candidates(Buf b, Py_ssize_t n, Cands* out) noexcept nogil:
    cdef Py_ssize_t i, e, s, run_end = 0
    cdef uint32_t c, p
    cdef ValueMemo memo
    memo.start = 1  # empty
    memo.run_end = 0
    memo.stripped = 0
    memo.last_digit = -1
    for i in range(n):
        c = b[i]
        if c == 64:
            e = m_email(b, n, i, &s)
            if e >= 0:
                push(out, K_EMAIL, s, e)
        if i >= run_end and is_token(c):
            run_end = i + 1
            while run_end < n and is_token(b[run_end]):
                run_end += 1
            e = m_secret(b, n, i, run_end, &s)
            if e >= 0:
                push(out, K_SECRET, s, e)
        p = b[i - 1] if i > 0 else 0
        if is_word(p):
            continue
        if keyword_first(c) and not (p >= 128 and Py_UNICODE_ISALPHA(p)):
            e = m_keyword(b, n, i, &s, &memo)
            if e >= 0:
                push(out, K_SECRET, s, e)
        if is_alpha(c):
            e = m_iban(b, n, i)
            if e >= 0:
                push(out, K_IBAN, i, e)
        if is_digit(c):
            e = m_card(b, n, i)
            if e >= 0:
                push(out, K_CARD, i, e)
            e = m_ipv4(b, n, i)
            if e >= 0:
                push(out, K_IPV4, i, e)
        if is_digit(c) or c == 43 or c == 40:
            e = m_phone(b, n, i)
            if e >= 0:
                push(out, K_PHONE, i, e)
        if is_hex(c) or c == 58:
            e = m_ipv6(b, n, i)
            if e >= 0:
                push(out, K_IPV6, i, e)
            if c != 58:
                e = m_mac(b, n, i)
                if e >= 0:
                    push(out, K_MAC, i, e)

cdef int by_priority(const void* x, const void* y) noexcept nogil:
    cdef const Cand* a = <const Cand*>x
    cdef const Cand* o = <const Cand*>y
    if a.kind != o.kind:
        return -1 if a.kind < o.kind else 1
    if a.s != o.s:
        return -1 if a.s < o.s else 1
    if a.e != o.e:
        return -1 if a.e < o.e else 1
    return 0

cdef int by_start(const void* x, const void* y) noexcept nogil:
    cdef const Cand* a = <const Cand*>x
    cdef const Cand* o = <const Cand*>y
    if a.s != o.s:
        return -1 if a.s < o.s else 1
    if a.e != o.e:
        return -1 if a.e < o.e else 1
    return -1 if a.kind < o.kind else (1 if a.kind > o.kind else 0)

cdef Py_ssize_t resolve(Cands* found, unsigned char* taken) noexcept nogil:
    """Keeps, in priority order, the candidates that overlap nothing kept; sorts them by start."""
    cdef Py_ssize_t m, k, kept = 0
    cdef bint free_
    qsort(found.items, found.size, sizeof(Cand), by_priority)
    for m in range(found.size):
        free_ = True
        for k in range(found.items[m].s, found.items[m].e):
            if taken[k]:
                free_ = False
                break
        if free_:
            memset(taken + found.items[m].s, 1, found.items[m].e - found.items[m].s)
            found.items[kept] = found.items[m]
            kept += 1
    qsort(found.items, kept, sizeof(Cand), by_start)
    return kept


cdef Py_ssize_t scan_buffer(Buf buf, Py_ssize_t n, Cands* found) except -1:
    """Candidates in buf[:n] (zero-padded), resolved; how many were kept (found.items[:kept])."""
    cdef Py_ssize_t kept = 0
    cdef unsigned char* taken = <unsigned char*>calloc(n + 1, 1)
    if taken == NULL:
        raise MemoryError()
    try:
        with nogil:
            candidates(buf, n, found)
            if not found.failed:
                kept = resolve(found, taken)
        if found.failed:
            raise MemoryError()
        return kept
    finally:
        free(taken)


cdef int learn_fold(uint32_t c) except -1:
    folded = fold(chr(c))
    if len(folded) == 0:
        fold_state[c] = FOLD_REMOVED
    elif len(folded) == 1:
        fold_one[c] = ord(folded)
        fold_state[c] = FOLD_ONE
    else:
        fold_state[c] = FOLD_SEVERAL
    return fold_state[c]


cdef list scan_folded(text, Py_ssize_t n):
    """Scans the normalised view of a non-ASCII text; spans in the original's code points."""
    cdef uint32_t* src = <uint32_t*>malloc((n + 1) * sizeof(uint32_t))
    cdef Py_ssize_t cap = n + c_pad
    cdef uint32_t* view = <uint32_t*>malloc(cap * sizeof(uint32_t))
    cdef Py_ssize_t* origin = <Py_ssize_t*>malloc(cap * sizeof(Py_ssize_t))
    cdef Py_ssize_t k, m = 0, kept, x, need, start, end, previous_end = 0
    cdef uint32_t c
    cdef int state
    cdef void* grown
    cdef Cands found
    found.items = NULL
    found.size = 0
    found.cap = 0
    found.failed = 0
    spans = []
    try:
        if src == NULL or view == NULL or origin == NULL:
            raise MemoryError()
        PyUnicode_AsUCS4(text, <Py_UCS4*>src, n, 0)
        for k in range(n):
            c = src[k]
            if c < 128:
                state = FOLD_ONE
            elif c < BMP:
                state = fold_state[c]
                if state == FOLD_UNKNOWN:
                    state = learn_fold(c)
                if state == FOLD_ONE:
                    c = fold_one[c]
            else:
                state = FOLD_SEVERAL
            if state == FOLD_ONE:  # one code point in, at most one out: the first cap always suffices
                view[m] = c
                origin[m] = k
                m += 1
            elif state == FOLD_SEVERAL:
                folded = fold(chr(c))
                need = m + len(folded) + (n - k) + c_pad
                if need > cap:
                    cap = need * 2
                    grown = realloc(view, cap * sizeof(uint32_t))
                    if grown == NULL:
                        raise MemoryError()
                    view = <uint32_t*>grown
                    grown = realloc(origin, cap * sizeof(Py_ssize_t))
                    if grown == NULL:
                        raise MemoryError()
                    origin = <Py_ssize_t*>grown
                for ch in folded:
                    view[m] = ord(ch)
                    origin[m] = k
                    m += 1
        memset(view + m, 0, c_pad * sizeof(uint32_t))
        kept = scan_buffer(view, m, &found)
        for x in range(kept):  # same clipping as the pure twin's to_original
            start = found.items[x].s
            while start < found.items[x].e and origin[start] < previous_end:
                start += 1
            if start < found.items[x].e:
                end = origin[found.items[x].e - 1] + 1
                spans.append((origin[start], end, KINDS[found.items[x].kind]))
                previous_end = end
        return spans
    finally:
        free(src)
        free(view)
        free(origin)
        free(found.items)


def scan(text):
    """PII spans [(start, end, kind)] in code points, sorted by start, never overlapping."""
    if not isinstance(text, str):
        raise TypeError(f"scan() needs a str, not {type(text).__name__}")
    cdef Py_ssize_t n = len(text), kept, m
    if not text.isascii():
        return scan_folded(text, n)
    cdef uint32_t* buf = <uint32_t*>malloc((n + c_pad) * sizeof(uint32_t))
    cdef Cands found
    found.items = NULL
    found.size = 0
    found.cap = 0
    found.failed = 0
    if buf == NULL:
        raise MemoryError()
    try:
        memset(buf + n, 0, c_pad * sizeof(uint32_t))
        if n:
            PyUnicode_AsUCS4(text, <Py_UCS4*>buf, n, 0)
        kept = scan_buffer(buf, n, &found)
        return [(found.items[m].s, found.items[m].e, KINDS[found.items[m].kind]) for m in range(kept)]
    finally:
        free(buf)
        free(found.items)
