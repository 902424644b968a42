"""A deterministic synthetic digi.me user library for the sandbox to serve.

Everything a test may compare (names, metadata, dates, plaintext bytes, hashes) follows from
the seed, so a run can be checked against :meth:`Library.ground_truth`. Only the per-response
AES key and IV are random (protocol.md#file-format).

Content is described, not stored: a library of thousands of files costs a few dicts per file,
small files are built on demand (and kept in a bounded LRU), and large files are a keystream
that is never held in memory. Sizes are exact up front so the server can send
``Content-Length`` before building anything.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import brotli
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .catalogue import CATEGORY_BY_ID, SOURCE_BY_REFERENCE
from .encrypt import encrypted_size as _encrypted_size
from .encrypt import iter_encrypt

__all__ = [
    "DEFAULT_NOW_MS",
    "FileVersion",
    "Library",
    "LibraryFile",
    "generate_library",
]

DEFAULT_NOW_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: a fixed "now" keeps dates seeded
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

MIN_OBJECT_SIZE = 900  # bytes per JSON object; every object's fixed part fits below this
MIN_JPEG_SIZE = 1024
_CACHE_BYTES = 256 << 20  # LRU budget for built small payloads
_CACHEABLE = 4 << 20  # payloads above this are rebuilt instead of cached
_FILL = "@@FILL@@"

# --------------------------------------------------------------------------- services

# One row per synthetic account: what the accounts endpoint says and what files it makes.
# Ids, names and service groups come from the discovery catalogue (the source's row).
_ACCOUNTS: tuple[dict[str, Any], ...] = (
    {"key": "facebook", "type": "USER", "kinds": ("post",), "username": "alex.morgan"},
    {"key": "instagram", "type": "USER", "kinds": ("media",), "username": "alexmorgan_shots"},
    {
        "key": "spotify",
        "type": "USER",
        "kinds": ("playlist", "playhistory"),
        "username": "alexm",
    },
    {
        "key": "fitbit",
        "type": "USER",
        "kinds": ("activity",),
        "username": "alex.morgan@example.com",
    },
    {
        "key": "nhs",
        "type": "USER",
        "kinds": ("observation",),
        "username": "9434765919",
        "provider": (301, "NHS England", "nhs-england"),
    },
    {
        "key": "monzo",
        "type": "BANK",
        "kinds": ("transaction",),
        "username": "Current Account ...4821",
        "provider": (16441, "Monzo Bank Ltd", "monzo"),
    },
    {
        "key": "amex",
        "type": "CREDIT_CARD",
        "kinds": ("transaction",),
        "username": "Platinum Card ...1009",
        "provider": (12171, "American Express", "amex"),
    },
)


def _service(row: dict[str, Any]) -> dict[str, Any]:
    """An account row completed from its catalogue source: group, type and source ids."""
    source = SOURCE_BY_REFERENCE[row["key"]]
    group = CATEGORY_BY_ID[source.category]
    return {
        **row,
        "group": group.reference,
        "groupId": group.id,
        "groupName": group.name,
        "typeId": source.service_id,
        "typeName": source.service_name or source.name,
        "sourceId": source.id,
    }


_SERVICES: tuple[dict[str, Any], ...] = tuple(_service(row) for row in _ACCOUNTS)

# kind -> (objectType, schema standard, objectTypeId for the file name)
_KINDS: dict[str, tuple[str, str, int]] = {
    "post": ("post", "digime", 2),
    "media": ("media", "digime", 3),
    "playlist": ("playlist", "digime", 403),
    "playhistory": ("playhistory", "digime", 406),
    "activity": ("activity", "digime", 300),
    "observation": ("Observation", "fhir", 11),
    "transaction": ("transaction", "digime", 201),
}

_WORDS_TEXT = (
    "the a and of to in is that it for on with as was at by this from be have are or not but "
    "all we when your can there an which their more will would about if up out so what time "
    "morning coffee run park weekend friends family trip beach city music concert album song "
    "playlist dinner lunch walk dog cat garden rain sunny cloudy holiday work meeting project "
    "team birthday party photo great amazing lovely finally today tomorrow yesterday week "
    "month year new old favourite best good happy tired busy quiet long short early late "
    "train bus bike mountain river lake forest sea sky night day evening sunset sunrise book "
    "film show episode match game win score goal kitchen recipe bread cake tea market shop"
)
_WORDS = tuple(_WORDS_TEXT.split())


def _rng(key: int | str) -> random.Random:
    """A seeded PRNG: the library is synthetic test data, so reproducibility is the point."""
    return random.Random(key)  # noqa: S311 - deterministic test data, not secrets


def _build_corpus() -> str:
    rng = _rng(20240101)
    parts: list[str] = []
    n = 0
    while n < 96 * 1024:
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 16)))
        s = sentence[0].upper() + sentence[1:] + rng.choice((". ", ". ", "! ", ", "))
        parts.append(s)
        n += len(s)
    return "".join(parts)


_CORPUS = _build_corpus()


def _text(rng: random.Random, n: int) -> str:
    """``n`` characters of plausible JSON-safe prose, cheaply (a slice of a fixed corpus)."""
    if n <= 0:
        return ""
    if n > len(_CORPUS):
        reps = n // len(_CORPUS) + 2
        off = rng.randrange(len(_CORPUS))
        return (_CORPUS * reps)[off : off + n]
    off = rng.randrange(len(_CORPUS) - n + 1)
    return _CORPUS[off : off + n]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --------------------------------------------------------------------------- content specs


@dataclass(frozen=True)
class _Spec:
    """A hashable recipe for one version's plaintext; the bytes are built from it on demand."""

    kind: str  # a _KINDS key, or "jpeg", "pdf", "blob"
    seed: int
    size: int  # exact plaintext size
    count: int  # JSON objects / PDF lines
    account_id: str
    username: str
    start_ms: int  # objects' dates lie in [start_ms, end_ms]
    end_ms: int
    compression: str | None


def _obj_post(rng: random.Random, s: _Spec, ms: int) -> dict[str, Any]:
    ident = rng.getrandbits(52)
    return {
        "id": f"{s.account_id}_{ident}",
        "entityid": f"{ident:x}",
        "accountentityid": s.account_id,
        "createddate": ms,
        "updateddate": ms + rng.randint(0, 3 * HOUR_MS),
        "type": rng.choice(("STATUS", "PHOTO", "LINK", "VIDEO")),
        "text": _FILL,
        "likecount": rng.randint(0, 400),
        "commentcount": rng.randint(0, 60),
        "sharecount": rng.randint(0, 25),
        "personusername": s.username,
        "postreferenceurl": f"https://www.facebook.com/{s.username}/posts/{ident}",
        "privacy": rng.choice(("FRIENDS", "PUBLIC", "ONLY_ME")),
    }


def _obj_media(rng: random.Random, s: _Spec, ms: int) -> dict[str, Any]:
    ident = rng.getrandbits(60)
    return {
        "id": f"{s.account_id}_{ident}",
        "entityid": str(ident),
        "accountentityid": s.account_id,
        "createddate": ms,
        "type": rng.choice(("IMAGE", "VIDEO", "CAROUSEL_ALBUM")),
        "caption": _FILL,
        "likecount": rng.randint(0, 900),
        "commentcount": rng.randint(0, 80),
        "filter": rng.choice(("Normal", "Clarendon", "Juno", "Lark", "Valencia")),
        "link": f"https://www.instagram.com/p/{ident:x}/",
        "location": {"name": rng.choice(("London", "Brighton", "Bristol", "Edinburgh"))},
    }


_ARTISTS = ("Radiohead", "Bicep", "Little Simz", "Fred again..", "Arlo Parks", "The Smile")
_TRACKS = ("Everything In Its Right Place", "Glue", "Venom", "Delilah", "Eugene", "Bending Hectic")


def _obj_playlist(rng: random.Random, s: _Spec, ms: int) -> dict[str, Any]:
    ident = f"{rng.getrandbits(80):020x}"
    return {
        "id": ident,
        "entityid": ident,
        "accountentityid": s.account_id,
        "createddate": ms,
        "name": rng.choice(("Running", "Focus", "Sunday morning", "Road trip", "Discover")),
        "description": _FILL,
        "public": rng.random() < 0.5,
        "collaborative": False,
        "trackcount": rng.randint(5, 120),
        "followercount": rng.randint(0, 40),
        "owner": {"id": s.username, "displayname": s.username},
        "uri": f"spotify:playlist:{ident}",
    }


def _obj_playhistory(rng: random.Random, s: _Spec, ms: int) -> dict[str, Any]:
    ident = f"{rng.getrandbits(80):020x}"
    artist = rng.choice(_ARTISTS)
    return {
        "id": f"{s.account_id}_{ms}",
        "accountentityid": s.account_id,
        "createddate": ms,
        "playedat": _iso(ms),
        "track": {
            "id": ident,
            "name": rng.choice(_TRACKS),
            "artists": [{"name": artist}],
            "album": {"name": f"{artist} - Live"},
            "durationms": rng.randint(120_000, 420_000),
            "explicit": rng.random() < 0.1,
        },
        "context": {"type": "playlist", "uri": f"spotify:playlist:{rng.getrandbits(64):x}"},
        "lyricsexcerpt": _FILL,
    }


def _obj_activity(rng: random.Random, s: _Spec, ms: int) -> dict[str, Any]:
    kind = rng.choice(("Walk", "Run", "Bike", "Swim", "Yoga"))
    duration = rng.randint(600_000, 5_400_000)
    return {
        "id": f"{s.account_id}_{rng.getrandbits(48)}",
        "accountentityid": s.account_id,
        "createddate": ms,
        "name": kind,
        "startdate": ms,
        "duration": duration,
        "distance": {"value": round(rng.uniform(0.5, 42.0), 2), "unit": "km"},
        "steps": rng.randint(500, 25_000),
        "calories": rng.randint(40, 1500),
        "averageheartrate": rng.randint(80, 170),
        "elevationgain": rng.randint(0, 600),
        "notes": _FILL,
    }


_LOINC = (
    ("8867-4", "Heart rate", "beats/minute", "/min", 50, 110),
    ("29463-7", "Body weight", "kg", "kg", 50, 110),
    ("8310-5", "Body temperature", "Cel", "Cel", 36, 39),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL", 70, 140),
)


def _obj_observation(rng: random.Random, s: _Spec, ms: int) -> dict[str, Any]:
    code, display, unit, ucum, lo, hi = rng.choice(_LOINC)
    return {
        "resourceType": "Observation",
        "id": f"{rng.getrandbits(64):016x}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{s.username}"},
        "effectiveDateTime": _iso(ms),
        "valueQuantity": {
            "value": round(rng.uniform(lo, hi), 1),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": ucum,
        },
        "note": [{"text": _FILL}],
    }


_MERCHANTS = (
    ("Tesco", "groceries"),
    ("Pret A Manger", "eating_out"),
    ("TfL", "transport"),
    ("Amazon", "shopping"),
    ("Netflix", "entertainment"),
    ("Octopus Energy", "bills"),
    ("Salary ACME Ltd", "income"),
)


def _obj_transaction(rng: random.Random, s: _Spec, ms: int) -> dict[str, Any]:
    merchant, category = rng.choice(_MERCHANTS)
    amount = round(rng.uniform(1.0, 180.0), 2)
    if category == "income":
        amount = round(rng.uniform(1800, 3200), 2)
    return {
        "id": f"tx_{rng.getrandbits(64):016x}",
        "accountentityid": s.account_id,
        "createddate": ms,
        "transactiondate": ms,
        "postdate": ms + rng.randint(0, 2 * DAY_MS),
        "amount": {"amount": amount if category == "income" else -amount, "currency": "GBP"},
        "baseType": "CREDIT" if category == "income" else "DEBIT",
        "category": category,
        "merchantname": merchant,
        "originaldescription": f"{merchant.upper()} REF {rng.randint(100000, 999999)}",
        "status": "POSTED",
        "runningbalance": {"amount": round(rng.uniform(-500, 9000), 2), "currency": "GBP"},
        "notes": _FILL,
    }


_OBJECT_BUILDERS = {
    "post": _obj_post,
    "media": _obj_media,
    "playlist": _obj_playlist,
    "playhistory": _obj_playhistory,
    "activity": _obj_activity,
    "observation": _obj_observation,
    "transaction": _obj_transaction,
}


def _build_json(s: _Spec) -> bytes:
    """A JSON array of ``s.count`` objects of exactly ``s.size`` bytes (the prose absorbs slack)."""
    rng = _rng(s.seed)
    make = _OBJECT_BUILDERS[s.kind]
    n = s.count
    body = s.size - 2 - (n - 1)
    base, extra = divmod(body, n)
    step = max(1, (s.end_ms - s.start_ms) // n)
    parts: list[str] = []
    for i in range(n):
        target = base + (1 if i < extra else 0)
        ms = s.end_ms - i * step - rng.randrange(step)
        text = json.dumps(make(rng, s, ms), separators=(",", ":"))
        need = target - (len(text) - len(_FILL))
        if need < 0:  # pragma: no cover - MIN_OBJECT_SIZE guards this
            raise RuntimeError(f"{s.kind} object exceeds its {target}-byte budget")
        parts.append(text.replace(_FILL, _text(rng, need), 1))
    out = ("[" + ",".join(parts) + "]").encode("ascii")
    assert len(out) == s.size
    return out


# A baseline 8x8 greyscale JPEG: SOI, APP0/JFIF, COM filler, DQT, SOF0, DHT (DC, AC), SOS,
# one block whose DC difference has category 8, EOI. Valid for any decoder.
_JPEG_APP0 = bytes.fromhex("ffe000104a46494600010101004800480000")
_JPEG_DQT = bytes.fromhex("ffdb004300") + bytes([4] + [1] * 63)
_JPEG_SOF0 = bytes.fromhex("ffc0000b080008000801011100")
_JPEG_DHT_DC = bytes.fromhex("ffc400140001") + bytes(15) + b"\x08"
_JPEG_DHT_AC = bytes.fromhex("ffc400141001") + bytes(15) + b"\x00"
_JPEG_SOS = bytes.fromhex("ffda0008010100003f00")
_JPEG_FIXED = 2 + len(_JPEG_APP0) + len(_JPEG_DQT) + len(_JPEG_SOF0)
_JPEG_FIXED += len(_JPEG_DHT_DC) + len(_JPEG_DHT_AC) + len(_JPEG_SOS) + 2 + 2  # scan + EOI


def _jpeg_scan(rng: random.Random) -> bytes:
    """Entropy-coded data for one block: DC code '0' + 8 value bits + EOB '0', padded with 1s."""
    v = rng.randint(128, 255)
    bits = "0" + format(v if rng.random() < 0.5 else 255 - v, "08b") + "0"
    bits += "1" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    out = bytearray()
    for b in data:
        out.append(b)
        if b == 0xFF:  # pragma: no cover - the bit pattern above never yields 0xFF
            out.append(0)
    return bytes(out)


def _build_jpeg(s: _Spec) -> bytes:
    """A valid tiny JPEG padded to exactly ``s.size`` bytes with COM segments (incompressible)."""
    rng = _rng(s.seed)
    fill = s.size - _JPEG_FIXED
    comment = f"privateshare sandbox photo {s.seed & 0xFFFF:04x} taken {_iso(s.end_ms)}".encode()
    segments: list[bytes] = []
    if fill:
        k = math.ceil(fill / 65537)
        base, extra = divmod(fill, k)
        for i in range(k):
            seg = base + (1 if i < extra else 0)  # whole segment: marker(2) + length(2) + data
            data_len = seg - 4
            head = comment[:data_len] if i == 0 else b""
            data = head + rng.randbytes(data_len - len(head))
            segments.append(b"\xff\xfe" + (seg - 2).to_bytes(2, "big") + data)
    out = b"".join(
        [
            b"\xff\xd8",
            _JPEG_APP0,
            *segments,
            _JPEG_DQT,
            _JPEG_SOF0,
            _JPEG_DHT_DC,
            _JPEG_DHT_AC,
            _JPEG_SOS,
            _jpeg_scan(rng),
            b"\xff\xd9",
        ]
    )
    assert len(out) == s.size
    return out


_PDF_ROW = 46  # "YYYY-MM-DD  <merchant:20> <amount:9> GBP": fixed width, so size needs no rng


@functools.lru_cache(maxsize=4096)
def _day(days_since_epoch: int) -> str:
    return datetime.fromtimestamp(days_since_epoch * 86_400, tz=UTC).strftime("%Y-%m-%d")


def _build_pdf(s: _Spec, *, measure: bool = False) -> bytes:
    """A minimal valid PDF (correct xref offsets): a statement of ``s.count`` lines.

    Rows are fixed width, so ``measure=True`` (dummy rows) gives the exact size cheaply.
    """
    rng = _rng(s.seed)
    lines_per_page = 48
    pages = max(1, math.ceil(s.count / lines_per_page))
    objs: dict[int, bytes] = {}
    font_id = 3
    kids = []
    next_id = 4
    for p in range(pages):
        page_id, content_id = next_id, next_id + 1
        next_id += 2
        kids.append(page_id)
        rows = []
        first = p * lines_per_page
        for i in range(first, min(s.count, first + lines_per_page)):
            if measure:
                rows.append("x" * _PDF_ROW)
                continue
            merchant = _MERCHANTS[int(rng.random() * len(_MERCHANTS))][0]
            day = _day((s.end_ms - i * HOUR_MS * 7) // DAY_MS)
            rows.append(f"{day}  {merchant:<20} {1 + 249 * rng.random():>9.2f} GBP")
        stream = ["BT", "/F1 10 Tf", "50 780 Td", "14 TL"]
        if p == 0:
            stream.append(f"(Statement for {s.username}) Tj T*")
        stream += [f"({r}) Tj T*" for r in rows]
        stream.append("ET")
        data = "\n".join(stream).encode("latin-1")
        objs[content_id] = (
            b"<< /Length " + str(len(data)).encode() + b" >>\nstream\n" + data + b"\nendstream"
        )
        objs[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {content_id} 0 R >>"
        ).encode()
    objs[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objs[2] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    ).encode()
    objs[font_id] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for oid in range(1, next_id):
        offsets.append(len(out))
        out += f"{oid} 0 obj\n".encode() + objs[oid] + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {next_id}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {next_id} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _blob_key(seed: int) -> bytes:
    return hashlib.sha256(f"privateshare-sandbox-blob:{seed}".encode()).digest()


def _iter_blob(s: _Spec, chunk_size: int) -> Iterator[bytes]:
    """AES-256-CTR keystream of the seed: fast, deterministic, incompressible, never held."""
    enc = Cipher(algorithms.AES(_blob_key(s.seed)), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(chunk_size)
    buf = bytearray(chunk_size + 15)
    left = s.size
    while left > 0:
        n = min(chunk_size, left)
        got = enc.update_into(memoryview(zeros)[:n], buf)
        yield bytes(memoryview(buf)[:got])
        left -= n


_BUILDERS = {"jpeg": _build_jpeg, "pdf": _build_pdf}


class _LRU:
    """A byte-bounded, thread-safe LRU for built small payloads (the server may be threaded)."""

    def __init__(self, budget: int) -> None:
        self._data: OrderedDict[tuple[_Spec, bool], bytes] = OrderedDict()
        self._bytes = 0
        self._budget = budget
        self._lock = threading.Lock()

    def get(self, key: tuple[_Spec, bool]) -> bytes | None:
        with self._lock:
            v = self._data.get(key)
            if v is not None:
                self._data.move_to_end(key)
            return v

    def put(self, key: tuple[_Spec, bool], value: bytes) -> None:
        if len(value) > _CACHEABLE:
            return
        with self._lock:
            if key in self._data:
                return
            self._data[key] = value
            self._bytes += len(value)
            while self._bytes > self._budget and self._data:
                _, old = self._data.popitem(last=False)
                self._bytes -= len(old)


_cache = _LRU(_CACHE_BYTES)
_blob_digests: dict[tuple[_Spec, str], bytes] = {}  # (spec, algo) -> digest, across libraries
# Plaintext SHA-256 of small files, across libraries: a compressed file's plaintext is not
# cached (only its payload), so each sandbox's ground truth would rebuild it. Bounded.
_plain_digests: dict[_Spec, str] = {}
_PLAIN_DIGESTS_MAX = 200_000
_blob_lock = threading.Lock()


def _plain_bytes(s: _Spec) -> bytes:
    hit = _cache.get((s, False))
    if hit is not None:
        return hit
    data = _BUILDERS[s.kind](s) if s.kind in _BUILDERS else _build_json(s)
    if s.compression is None:  # compressed files keep only their payload in the cache
        _cache.put((s, False), data)
    return data


def _compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if how == "brotli":
        compressed: bytes = brotli.compress(data, quality=4)
        return compressed
    raise ValueError(f"unknown compression {how!r}")


def _payload_bytes(s: _Spec) -> bytes:
    if s.compression is None:
        return _plain_bytes(s)
    hit = _cache.get((s, True))
    if hit is not None:
        return hit
    data = _compress(_plain_bytes(s), s.compression)
    _cache.put((s, True), data)
    return data


def _blob_digest(s: _Spec, algo: str) -> bytes:
    """Streamed digest of a large file, computed once per process."""
    with _blob_lock:
        hit = _blob_digests.get((s, algo))
    if hit is not None:
        return hit
    h = hashlib.new(algo)
    for chunk in _iter_blob(s, 4 << 20):
        h.update(chunk)
    d = h.digest()
    with _blob_lock:
        _blob_digests[(s, algo)] = d
    return d


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class FileVersion:
    """One version of a file as the server would serve it at some ``updatedDate``."""

    updated_date: int  # ms since epoch
    x_metadata: dict  # the JSON object of the x-metadata header: {"metadata": ..., "compression"?}
    plaintext_size: int  # bytes of the final (decompressed) plaintext
    _spec: _Spec = field(repr=False)
    _memo: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __hash__(self) -> int:  # x_metadata is a dict; the recipe identifies the content
        return hash((self.updated_date, self.plaintext_size, self._spec))

    @property
    def compression(self) -> str | None:
        """``"gzip"``, ``"brotli"`` or None: how the payload is compressed before encryption."""
        return self._spec.compression

    @property
    def is_large(self) -> bool:
        """True for streamed keystream files (never built in memory)."""
        return self._spec.kind == "blob"

    def x_metadata_header(self) -> str:
        """The ``x-metadata`` header value: unpadded base64url of the JSON (protocol.md#files)."""
        raw = json.dumps(self.x_metadata, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def plaintext_sha256(self) -> str:
        """Ground truth the client's delivered bytes must match (hex SHA-256, cached)."""
        v = self._memo.get("sha256")
        if v is None:
            if self.is_large:
                v = _blob_digest(self._spec, "sha256").hex()
            else:
                v = _plain_digests.get(self._spec)
                if v is None:
                    v = hashlib.sha256(_plain_bytes(self._spec)).hexdigest()
                    if len(_plain_digests) >= _PLAIN_DIGESTS_MAX:
                        _plain_digests.clear()
                    _plain_digests[self._spec] = v
            self._memo["sha256"] = v
        return v

    def iter_plaintext(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The decompressed plaintext, streamed."""
        if self.is_large:
            yield from _iter_blob(self._spec, chunk_size)
            return
        data = _plain_bytes(self._spec)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    def iter_payload(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """P, the bytes that get encrypted (compressed if ``compression`` is set), streamed."""
        if self.is_large:
            yield from _iter_blob(self._spec, chunk_size)
            return
        data = _payload_bytes(self._spec)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    def payload_size(self) -> int:
        """Size of P; builds and compresses the file once if it is compressed (then cached)."""
        if self._spec.compression is None:
            return self.plaintext_size
        v = self._memo.get("payload_size")
        if v is None:
            v = self._memo["payload_size"] = len(_payload_bytes(self._spec))
        return v

    def payload_sha512(self) -> bytes:
        """SHA-512 of P, the v1.5 prefix (streamed for large files, cached)."""
        v = self._memo.get("sha512")
        if v is None:
            if self.is_large:
                v = _blob_digest(self._spec, "sha512")
            else:
                v = hashlib.sha512(_payload_bytes(self._spec)).digest()
            self._memo["sha512"] = v
        return v

    def encrypted_size(self, *, hashed: bool = False) -> int:
        """Exact length of :meth:`iter_encrypted`'s output, for ``Content-Length``."""
        return _encrypted_size(self.payload_size(), hashed=hashed)

    def iter_encrypted(
        self, public_key: RSAPublicKey, *, hashed: bool = False, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """The response body: EK || IV || AES-CBC(P) (v1.7), or with SHA512(P) first (v1.5).

        With ``hashed=True`` a large file is read twice (digest first, cached afterwards).
        """
        digest = self.payload_sha512() if hashed else None
        return iter_encrypt(
            self.iter_payload(chunk_size), public_key, hashed=hashed, sha512_of_plaintext=digest
        )


@dataclass(frozen=True)
class LibraryFile:
    """A named file in the user's library; later versions are the "updated" files."""

    name: str
    account_id: str
    service_group: str
    versions: tuple[FileVersion, ...]

    @property
    def latest(self) -> FileVersion:
        """The last version (what a completed run must deliver)."""
        return self.versions[-1]

    def list_entry(self, version: int = -1) -> dict[str, Any]:
        """The ``fileList`` entry (protocol.md#files) of one version."""
        v = self.versions[version]
        entry: dict[str, Any] = {"name": self.name, "updatedDate": v.updated_date}
        meta = v.x_metadata["metadata"]
        if "objectType" in meta:
            for k in ("schema", "serviceGroup", "serviceName", "objectType", "objectCount"):
                entry[k] = meta[k]
        return entry


@dataclass(frozen=True)
class Library:
    """The synthetic user: accounts, files, and which account (if any) ends partial."""

    seed: int
    accounts: tuple[dict, ...]
    files: tuple[LibraryFile, ...]
    partial_account_id: str | None
    _index: dict[str, LibraryFile] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    def __hash__(self) -> int:  # accounts are dicts; equal libraries share these
        return hash((self.seed, self.files, self.partial_account_id))

    def __post_init__(self) -> None:
        self._index.update({f.name: f for f in self.files})

    def file(self, name: str) -> LibraryFile:
        """The file called ``name``; KeyError if there is none."""
        return self._index[name]

    def files_for_account(self, account_id: str) -> tuple[LibraryFile, ...]:
        """Files synced from one account (for per-account sync states)."""
        return tuple(f for f in self.files if f.account_id == account_id)

    def without_account(self, account_id: str) -> Library:
        """This library after the user deleted one account: its files go with it."""
        return Library(
            self.seed,
            tuple(a for a in self.accounts if a["id"] != account_id),
            tuple(f for f in self.files if f.account_id != account_id),
            None if self.partial_account_id == account_id else self.partial_account_id,
        )

    def warm(self) -> None:
        """Build and compress the small files now, so first downloads are not slowed by it."""
        for f in self.files:
            for v in f.versions:
                if not v.is_large:
                    v.payload_size()

    def ground_truth(self) -> dict[str, str]:
        """name -> SHA-256 of the last version's plaintext: what a finished run must hold."""
        return {f.name: f.latest.plaintext_sha256() for f in self.files}


# --------------------------------------------------------------------------- generation


def _parse_distribution(size_distribution: str) -> int | None:
    if size_distribution == "realistic":
        return None
    if size_distribution.startswith("fixed:"):
        n = int(size_distribution.removeprefix("fixed:"))
        if n <= 0:
            raise ValueError("fixed:<bytes> needs a positive size")
        return n
    raise ValueError(f"unknown size_distribution {size_distribution!r}")


def _accounts(rng: random.Random, now: int) -> tuple[dict, ...]:
    out = []
    for svc in _SERVICES:
        acc_id = f"{svc['sourceId']}_{rng.getrandbits(128):032X}"
        created = now - rng.randint(200, 1500) * DAY_MS
        acc: dict[str, Any] = {
            "id": acc_id,
            "reference": f"{rng.getrandbits(128):032x}",
            "type": svc["type"],
            "createdDate": created,
            "serviceGroupId": svc["groupId"],
            "serviceGroupName": svc["groupName"],
            "serviceTypeId": svc["typeId"],
            "serviceTypeName": svc["typeName"],
            "serviceTypeReference": svc["key"],
            "sourceId": svc["sourceId"],
            "updatedDate": now - rng.randint(1, 72) * HOUR_MS,
            "username": svc["username"],
            "accessTokenStatus": {"authorized": True, "expiresAt": now + 90 * DAY_MS},
            "providerFavIcon": f"https://securedownloads.digi.me/logos/{svc['key']}/favicon.png",
            "providerLogo": f"https://securedownloads.digi.me/logos/{svc['key']}/logo.png",
            "sample": False,
        }
        if "provider" in svc:
            pid, pname, pref = svc["provider"]
            acc["serviceProviderId"] = pid
            acc["serviceProviderName"] = pname
            acc["serviceProviderReference"] = pref
        out.append(acc)
    return tuple(out)


def _json_shape(rng: random.Random, target: int) -> tuple[int, int]:
    """(size, objectCount) for a JSON file of about ``target`` bytes."""
    size = max(target, MIN_OBJECT_SIZE + 2)
    per = rng.randint(MIN_OBJECT_SIZE + 100, 2000)
    count = max(1, min((size - 1) // (MIN_OBJECT_SIZE + 1), round(size / per)))
    return size, count


def _realistic_size(rng: random.Random) -> int:
    if rng.random() < 0.05:
        return rng.randint(64 << 10, 2 << 20)
    return min(50 << 10, max(1 << 10, int(rng.lognormvariate(math.log(8 << 10), 0.9))))


def generate_library(
    seed: int = 1,
    *,
    files: int = 24,
    large_files: int = 0,
    large_file_size: int = 256 << 20,
    size_distribution: str = "realistic",
    updated_fraction: float = 0.2,
    partial: bool = False,
    now_ms: int | None = None,
) -> Library:
    """Build the library for ``seed``; cheap (no content is built until it is read).

    Every 10th file (offsets 4 and 9) is raw: a JPEG photo from a social account, then a PDF
    statement from a finance account; the rest are mapped JSON. Compression cycles gzip,
    brotli, none over the mapped files; JPEGs and large files are uncompressed, PDFs gzip.
    Only mapped files get a second version (``updated_fraction`` of them), never those of
    the partial account (its sync stopped). ``now_ms`` defaults to a fixed instant so that
    dates, too, follow from the seed.
    """
    if files < 0 or large_files < 0 or large_file_size < 0:
        raise ValueError("files, large_files and large_file_size must be >= 0")
    fixed = _parse_distribution(size_distribution)
    now = DEFAULT_NOW_MS if now_ms is None else now_ms
    rng = _rng(f"privateshare-sandbox:{seed}")
    accounts = _accounts(rng, now)
    by_key = {svc["key"]: (svc, acc) for svc, acc in zip(_SERVICES, accounts, strict=True)}
    partial_id = rng.choice(accounts)["id"] if partial else None

    profiles = [(svc["key"], kind) for svc in _SERVICES for kind in svc["kinds"]]
    social = [k for k, s in by_key.items() if s[0]["group"] == "social"]
    finance = [k for k, s in by_key.items() if s[0]["group"] == "finance"]
    compressions = ("gzip", "brotli", None)

    out: list[LibraryFile] = []
    mapped_i = 0
    for i in range(files):
        frng = _rng(f"{seed}:file:{i}")
        updated = now - frng.randint(2 * DAY_MS, 60 * DAY_MS)
        start = updated - frng.randint(30, 365) * DAY_MS
        slot = i % 10
        if slot in (4, 9):
            key = (
                social[(i // 10) % len(social)] if slot == 4 else finance[(i // 10) % len(finance)]
            )
            svc, acc = by_key[key]
            out.append(_raw_file(frng, seed, i, slot, svc, acc, fixed, start, updated))
            continue
        key, kind = profiles[mapped_i % len(profiles)]
        compression = compressions[mapped_i % 3]
        mapped_i += 1
        svc, acc = by_key[key]
        target = fixed if fixed is not None else _realistic_size(frng)
        size, count = _json_shape(frng, target)
        otid = _KINDS[kind][2]
        shape = (svc, acc, kind, compression, start)
        versions = [_mapped_version(shape, frng.getrandbits(63), size, count, updated)]
        if acc["id"] != partial_id and frng.random() < updated_fraction:
            extra = max(1, math.ceil(count * 0.2))
            size2 = size + extra * (size // count)
            later = updated + frng.randint(HOUR_MS, DAY_MS)
            versions.append(
                _mapped_version(shape, frng.getrandbits(63), size2, count + extra, later)
            )
        yyyymm = datetime.fromtimestamp(updated / 1000, tz=UTC).strftime("%Y%m")
        name = f"{svc['sourceId']}_{svc['groupId']}_{svc['typeId']}_{otid}_{yyyymm}_{i}.json"
        out.append(LibraryFile(name, acc["id"], svc["group"], tuple(versions)))

    for k in range(large_files):
        frng = _rng(f"{seed}:large:{k}")
        acc = accounts[k % len(accounts)]
        svc = _SERVICES[k % len(_SERVICES)]
        updated = now - frng.randint(2 * DAY_MS, 30 * DAY_MS)
        name = f"archive-{k + 1:04d}.bin"
        spec = _Spec(
            "blob", frng.getrandbits(63), large_file_size, 0, acc["id"], "", 0, updated, None
        )
        meta = _raw_meta(
            "application/octet-stream", acc["id"], updated, name, ["archive", svc["key"]]
        )
        out.append(
            LibraryFile(
                name,
                acc["id"],
                svc["group"],
                (FileVersion(updated, {"metadata": meta}, large_file_size, spec),),
            )
        )
    return Library(seed, accounts, tuple(out), partial_id)


def _mapped_version(shape: tuple, vseed: int, size: int, count: int, when: int) -> FileVersion:
    """One version of a mapped JSON file and its protocol.md#files mapped metadata."""
    svc, acc, kind, compression, start = shape
    object_type, standard, _ = _KINDS[kind]
    spec = _Spec(kind, vseed, size, count, acc["id"], svc["username"], start, when, compression)
    meta = {
        "objectCount": count,
        "objectType": object_type,
        "serviceGroup": svc["group"],
        "serviceName": svc["key"],
        "schema": {"standard": standard, "version": "1.0.0"},
    }
    xm: dict[str, Any] = {"metadata": meta}
    if compression is not None:
        xm["compression"] = compression
    return FileVersion(when, xm, size, spec)


def _raw_meta(mimetype: str, account_id: str, created: int, name: str, tags: list[str]) -> dict:
    return {
        "mimetype": mimetype,
        "accounts": [{"accountid": account_id}],
        "created": created,
        "reference": [name],
        "tags": tags,
    }


def _raw_file(
    frng: random.Random,
    seed: int,
    i: int,
    slot: int,
    svc: dict[str, Any],
    acc: dict[str, Any],
    fixed: int | None,
    start: int,
    updated: int,
) -> LibraryFile:
    """A photo (slot 4) or a PDF statement (slot 9), lower-case raw metadata (protocol.md#files)."""
    cseed = frng.getrandbits(63)
    if slot == 4:
        size = max(MIN_JPEG_SIZE, fixed if fixed is not None else frng.randint(20 << 10, 400 << 10))
        spec = _Spec("jpeg", cseed, size, 0, acc["id"], svc["username"], start, updated, None)
        name = f"photo-{i:04d}.jpg"
        meta = _raw_meta("image/jpeg", acc["id"], updated, name, ["photo", svc["key"]])
        xm: dict[str, Any] = {"metadata": meta}
    else:
        lines = max(1, (fixed if fixed is not None else frng.randint(2 << 10, 40 << 10)) // 60)
        spec = _Spec("pdf", cseed, 0, lines, acc["id"], svc["username"], start, updated, "gzip")
        size = len(_build_pdf(spec, measure=True))
        spec = _Spec("pdf", cseed, size, lines, acc["id"], svc["username"], start, updated, "gzip")
        name = f"statement-{i:04d}.pdf"
        meta = _raw_meta("application/pdf", acc["id"], updated, name, ["statement", svc["key"]])
        xm = {"metadata": meta, "compression": "gzip"}
    return LibraryFile(name, acc["id"], svc["group"], (FileVersion(updated, xm, size, spec),))
