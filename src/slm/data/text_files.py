"""Bytes -> text: UTF-8 decoding that counts what it replaces, line-ended pieces, binary files.

The rules every text input shares, whatever it comes from (`slm.data.sources` for files, JSONL
records and datasets; `slm.cli.main` for a prompt on stdin):

- a file whose first MiB is not UTF-8 is decoded in the encoding `charset-normalizer`
  detects there (Latin-1, Windows-1252, Shift JIS, ...), and the warning names it; only bytes
  that no detected encoding explains become U+FFFD, and they are counted;
- a byte-order mark at the start of a file is not text and is dropped;
- long text is cut into pieces of about `PIECE_CHARS` characters that end at a line break,
  so that no reader holds a whole file or record in memory;
- a file that looks binary (NUL bytes, mostly non-UTF-8 or control bytes) is named as such.

Which files to read and how they become documents is `slm.data.sources`' job.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

Log = Callable[[str], None]

# 64 Ki characters: big enough that per-piece overhead vanishes, small enough that one encode
# batch (slm.data.prepare.BATCH_CHARS) holds 16 pieces to spread over the cores.
PIECE_CHARS = 1 << 16
BINARY_PROBE_BYTES = 8192
ENCODING_PROBE_BYTES = 1 << 20  # enough text for a confident guess, read once per file
# Latin-1 prose has a few percent of bytes that are not UTF-8; random binary data about half.
BINARY_BAD_RATIO = 0.3

# surrogateescape turns each undecodable byte into one code point U+DC80..U+DCFF; valid
# UTF-8 never yields these, so counting them counts exactly the bad bytes.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_CONTROL = re.compile(b"[\x01-\x08\x0e-\x1a\x1c-\x1f]")


def replace_undecodable(text: str) -> tuple[str, int]:
    """Replace surrogate-escaped bytes with U+FFFD; return the text and how many there were."""
    return _ESCAPED_BYTE.subn("\ufffd", text)


def line_pieces(texts: Iterable[str], piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Re-cut a stream of text into non-empty pieces of about `piece_chars`, ending after `\\n`.

    The pre-tokenizer splits at line breaks anyway, so on ordinary text the pieces encode to
    the very tokens of the whole text (checked on the built-in corpus); only a cut inside a
    run of blank lines, or a hard cut where no line break came for `piece_chars` characters,
    can change a token or two there. Decoding is lossless either way.

    >>> list(line_pieces(["ab\\ncd", "e\\nf"], piece_chars=4))
    ['ab\\n', 'cde\\n', 'f']
    """
    buffer = ""
    for text in texts:
        buffer += text
        # Walk an index rather than re-slicing the rest: one 100 MB record stays linear time.
        start = 0
        while len(buffer) - start >= piece_chars:
            end = start + piece_chars
            cut = buffer.rfind("\n", start, end) + 1 or end
            yield buffer[start:cut]
            start = cut
        buffer = buffer[start:]
    if buffer:
        yield buffer


def detect_encoding(path: Path) -> str:
    """ "utf-8", or the encoding `charset-normalizer` finds for a head that is not UTF-8.

    Only the first `ENCODING_PROBE_BYTES` are read: a file is taken to be in one encoding.
    """
    with open(path, "rb") as f:
        head = f.read(ENCODING_PROBE_BYTES)
    decoded = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(head)
    bad = len(_ESCAPED_BYTE.findall(decoded))
    multibyte = sum(1 for ch in decoded if ord(ch) > 127) - bad
    if bad <= multibyte:  # UTF-8, or UTF-8 with a few damaged bytes: those get replaced
        return "utf-8"
    from charset_normalizer import from_bytes

    matches = list(from_bytes(head))
    if not matches:
        return "utf-8"  # nothing fits: UTF-8 with counted replacements, as before
    # On a short Western text the Latin code pages tie (French read as cp1250 turns "très"
    # into "trčs"); among the least chaotic, prefer Windows-1252, the common one.
    least = min(m.chaos for m in matches)
    tied = [m.encoding for m in matches if m.chaos <= least + 0.01]
    return "cp1252" if "cp1252" in tied else tied[0]


def read_file_pieces(path: Path, log: Log, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """A text file's pieces, decoded as UTF-8 or the detected encoding; warns at the end."""
    encoding = detect_encoding(path)
    decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
    bad_bytes = 0

    def blocks() -> Iterator[str]:
        nonlocal bad_bytes
        with open(path, "rb") as f:
            first = True
            while block := f.read(piece_chars):
                text, bad = replace_undecodable(decoder.decode(block))
                bad_bytes += bad
                if first and text.startswith("\ufeff"):  # a byte-order mark is not text
                    text = text[1:]
                first = False
                yield text
            text, bad = replace_undecodable(decoder.decode(b"", final=True))
            bad_bytes += bad
            yield text

    yield from line_pieces(blocks(), piece_chars)
    if encoding != "utf-8":
        log(f"note: {path} is not UTF-8; decoded it as {encoding} (detected)")
    if bad_bytes:
        log(f"warning: {bad_bytes} undecodable bytes replaced in {path} (not {encoding})")


def binary_reason(path: Path) -> str | None:
    """Why `path` looks binary (NUL bytes, mostly non-UTF-8 or control bytes), or None if text."""
    with open(path, "rb") as f:
        head = f.read(BINARY_PROBE_BYTES)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text; convert it to UTF-8"
    if b"\x00" in head:
        return "contains NUL bytes"
    decoded = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(head)
    bad = len(_ESCAPED_BYTE.findall(decoded)) + len(_CONTROL.findall(head))
    if bad > BINARY_BAD_RATIO * len(head):
        return f"{bad} of its first {len(head)} bytes are not text"
    return None
