"""Aligning a German and an English Debian package description into segment pairs.

The synopsis is one pair; the long descriptions are paired paragraph by paragraph (when both
sides have as many), a paragraph unit by unit (the text before the first list item and each
list item), a unit sentence by sentence (a small deterministic splitter); where the counts
differ, the larger piece is one pair (see ``debian_corpus`` for the whole procedure).
"""

import re

_BULLET = re.compile(r"^(?:[*+\-•·]|o)\s+(?=\S)")

# Tokens ending in "." after which a sentence does not end (lower-cased).
ABBREVIATIONS = frozenset(
    """
    e.g. i.e. etc. vs. cf. mr. mrs. dr. prof. inc. ltd. co. corp. approx. no. nos. esp. incl.
    ca. et al. fig. vol. ver. rev. jr. sr. st. resp. min. max. dept. misc. eds. ed. ibid.
    z.b. d.h. bzw. usw. evtl. ggf. inkl. bspw. u.a. o.a. u.ä. o.ä. v.a. nr. vgl. sog. hrsg.
    abs. std. mio. mrd. engl. dt. allg. bzgl. zzgl. ggü. insb. bzw. mind. ua. zb. dh.
    """.split()
)

_SENT_BOUNDARY = re.compile(r"[.!?][\"'»«“”)\]]*\s+(?=[\"'„“«»(\[]?[A-ZÄÖÜ0-9])")


def split_paragraphs(long_lines):
    """Split continuation lines into paragraphs at lines holding only ``.``."""
    paragraphs, current = [], []
    for line in long_lines:
        if line.strip() == ".":
            if current:
                paragraphs.append(current)
            current = []
        else:
            current.append(line)
    if current:
        paragraphs.append(current)
    return paragraphs


def split_units(paragraph_lines):
    """Split a paragraph into units: leading text, then one unit per list item."""
    units, current = [], []
    for line in paragraph_lines:
        stripped = line.strip()
        if _BULLET.match(stripped):
            if current:
                units.append(" ".join(current))
            current = [_BULLET.sub("", stripped)]
        elif stripped:
            current.append(stripped)
    if current:
        units.append(" ".join(current))
    return units


def _no_break_before(token):
    t = token.lower().lstrip("\"'„“«»([")
    if t in ABBREVIATIONS:
        return True
    if re.fullmatch(r"[^\W\d_]\.", t):  # an initial: "A.", "z.", "B."
        return True
    if re.fullmatch(r"\d+\.", t):  # German ordinal or list number: "3."
        return True
    if re.fullmatch(r"(?:[^\W\d_]{1,3}\.){2,}", t):  # "z.B.", "e.g.", "u.s.w."
        return True
    return False


def split_sentences(text):
    """Split text into sentences (deterministic, rule based).

    A sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets)
    followed by whitespace and an upper-case letter or digit (optionally after
    an opening quote or bracket), unless the token before it is a known
    abbreviation, an initial or a number (``3.``).
    """
    text = " ".join(text.split())
    sentences, start = [], 0
    for m in _SENT_BOUNDARY.finditer(text):
        end = m.start() + 1
        head = text[start:end]
        token = head.rsplit(None, 1)[-1] if head.strip() else ""
        if text[m.start()] == "." and _no_break_before(token):
            continue
        sentence = text[start : m.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def align_description(de, en):
    """Raw segment pairs for one description; also returns a paragraph-mismatch flag.

    ``de`` and ``en`` are ``(synopsis, long_lines)`` as from :func:`parse_index`.
    """
    pairs = [(de[0], en[0])]
    de_paras, en_paras = split_paragraphs(de[1]), split_paragraphs(en[1])
    if len(de_paras) != len(en_paras):
        return pairs, True
    for dp, ep in zip(de_paras, en_paras):
        du, eu = split_units(dp), split_units(ep)
        if len(du) != len(eu):
            pairs.append((" ".join(du), " ".join(eu)))
            continue
        for d, e in zip(du, eu):
            ds, es = split_sentences(d), split_sentences(e)
            if len(ds) == len(es):
                pairs.extend(zip(ds, es))
            else:
                pairs.append((d, e))
    return pairs, False
