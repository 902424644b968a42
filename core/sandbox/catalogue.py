"""The seeded catalogue of sources the sandbox's discovery endpoints answer from.

One table, fixed (not drawn from the seed): the ids, names and service groups of
the sources behind the library's accounts come from here (``library.py`` looks
them up), so a source found through discovery is the source of the account the
user later onboards. The other rows make the catalogue look like digi.me's:
social, music, entertainment, fitness, health and finance sources in several
countries and on several integration platforms, some sharing one service (as
health providers on one patient portal do), one deprecated, one pending, one
blocked, one for sample data only and two that take pushed data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: When the catalogue's rows were "published" (fixed, so answers never change).
PUBLISHED_MS = 1_546_300_800_000  # 2019-01-01T00:00:00Z
_ICONS = "https://securedownloads.digi.me/static/production/discovery"


def _icon(kind: str, reference: str) -> dict[str, Any]:
    return {
        "url": f"{_ICONS}/{kind}/{reference}/icon75x75.png",
        "mimetype": "image/png",
        "resize": "fit",
        "type": 0,
    }


@dataclass(frozen=True)
class Category:
    """A service group ("category" in the discovery API)."""

    id: int
    name: str
    reference: str
    title: str
    sub_title: str

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "categoryTypeId": 1,
            "name": self.name,
            "reference": self.reference,
            "title": self.title,
            "subTitle": self.sub_title,
            "expandedTitle": f"Select a {self.name.lower()} service",
            "expandedSubTitle": "You will be asked to log in",
            "resource": _icon("categories", self.reference),
        }


@dataclass(frozen=True)
class Country:
    id: int
    code: str
    name: str

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "name": self.name,
            "resource": _icon("countries", self.code),
        }


@dataclass(frozen=True)
class Platform:
    """How a source is connected: ``saas`` (web onboarding), ``sdk`` (on device), ``none``."""

    id: int
    name: str
    reference: str
    authorisation: str

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "reference": self.reference,
            "json": {"authorisation": {"type": self.authorisation}},
        }


@dataclass(frozen=True)
class Source:
    """One onboardable source (a bank, a health provider, a social network...)."""

    id: int
    service_id: int  # the service type: the ``serviceTypeId`` of accounts made from it
    name: str
    reference: str
    category: int
    countries: tuple[int, ...]  # empty: available everywhere
    platform: int
    service_name: str = ""  # default: the source's name
    service_reference: str = ""  # default: the source's reference
    type: int = 1  # 1 pull, 2 push
    status: str = "approved"
    homepage: str = ""
    search: dict[str, tuple[str, ...]] = field(default_factory=dict)  # alias, practitioner...
    address: dict[str, str] = field(default_factory=dict)
    provider_id: int | None = None


CATEGORIES: tuple[Category, ...] = (
    Category(1, "Social", "social", "Add your social accounts", "Posts, photos and more"),
    Category(2, "Health", "health", "Add your health records", "Records, results, medication"),
    Category(3, "Finance", "finance", "Add your bank accounts", "Transactions and balances"),
    Category(4, "Fitness", "fitness", "Add your fitness apps", "Activities, steps, heart rate"),
    Category(5, "Music", "music", "Add your music services", "Playlists and listening history"),
    Category(6, "Entertainment", "entertainment", "Add what you watch and play", "History"),
)

COUNTRIES: tuple[Country, ...] = (
    Country(1, "us", "United States"),
    Country(2, "is", "Iceland"),
    Country(3, "uk", "United Kingdom"),
    Country(4, "au", "Australia"),
    Country(5, "ca", "Canada"),
    Country(8, "it", "Italy"),
    Country(9, "eu", "European Union"),
    Country(10, "nl", "Netherlands"),
    Country(11, "ie", "Ireland"),
)

PLATFORMS: tuple[Platform, ...] = (
    Platform(1, "digi.me", "digime", "saas"),
    Platform(2, "Open Banking", "openbanking", "saas"),
    Platform(3, "Yodlee", "yodlee", "saas"),
    Platform(4, "OpenEpic", "openepic", "saas"),
    Platform(5, "MedMij", "medmij", "saas"),
    Platform(6, "NHS login", "nhslogin", "saas"),
    Platform(7, "Apple Health", "applehealth", "sdk"),
    Platform(8, "Health Connect", "healthconnect", "sdk"),
    Platform(9, "Direct upload", "upload", "none"),
)

TYPES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "Pull", "reference": "pull"},
    {"id": 2, "name": "Push", "reference": "push"},
)

_US, _UK, _NL = (1,), (3,), (10,)
_EU = (3, 8, 9, 10, 11)

SOURCES: tuple[Source, ...] = (
    # -- the library's accounts come from these seven (see library.py) --------------
    Source(1, 1, "Facebook", "facebook", 1, (), 1, homepage="https://www.facebook.com"),
    Source(4, 4, "Instagram", "instagram", 1, (), 1, homepage="https://www.instagram.com"),
    Source(19, 19, "Spotify", "spotify", 5, (), 1, homepage="https://www.spotify.com"),
    Source(7, 7, "Fitbit", "fitbit", 4, (), 1, homepage="https://www.fitbit.com"),
    Source(
        301,
        301,
        "NHS App",
        "nhs",
        2,
        _UK,
        6,
        homepage="https://www.nhs.uk/nhs-app/",
        search={"abbreviation": ("NHS",)},
    ),
    Source(6001, 6001, "Monzo", "monzo", 3, _UK, 2, homepage="https://monzo.com"),
    Source(
        6002,
        6002,
        "American Express",
        "amex",
        3,
        (1, 3),
        2,
        homepage="https://www.americanexpress.com",
        search={"abbreviation": ("Amex",)},
    ),
    # -- social --------------------------------------------------------------------
    Source(
        2,
        3,
        "X (Twitter)",
        "twitter",
        1,
        (),
        1,
        homepage="https://x.com",
        search={"alias": ("Twitter", "X")},
    ),
    Source(283, 2, "Facebook Page", "facebookpage", 1, (), 1, homepage="https://www.facebook.com"),
    Source(6, 12, "Flickr", "flickr", 1, (), 1, homepage="https://www.flickr.com"),
    Source(
        3,
        4,
        "Instagram (legacy)",
        "instagramlegacy",
        1,
        (),
        1,
        service_name="Instagram",
        service_reference="instagram",
        status="deprecated",
    ),
    # -- music ---------------------------------------------------------------------
    Source(21, 21, "Deezer", "deezer", 5, _EU, 1, homepage="https://www.deezer.com"),
    Source(22, 22, "Last.fm", "lastfm", 5, (), 1, homepage="https://www.last.fm"),
    Source(23, 23, "SoundCloud", "soundcloud", 5, (), 1, status="pending"),
    # -- entertainment -----------------------------------------------------------------
    Source(281, 31, "YouTube", "youtube", 6, (), 1, homepage="https://www.youtube.com"),
    Source(24, 33, "Netflix", "netflix", 6, (1, 3, 4, 5), 1, homepage="https://www.netflix.com"),
    Source(25, 34, "Twitch", "twitch", 6, (), 1, homepage="https://www.twitch.tv"),
    Source(26, 35, "Steam", "steam", 6, (), 1, homepage="https://store.steampowered.com"),
    # -- fitness -------------------------------------------------------------------
    Source(10, 10, "Strava", "strava", 4, (), 1, homepage="https://www.strava.com"),
    Source(11, 11, "Garmin Connect", "garmin", 4, (), 1, search={"alias": ("Garmin",)}),
    Source(14, 14, "Polar Flow", "polar", 4, _EU, 1, homepage="https://flow.polar.com"),
    Source(12, 30, "Apple Health", "applehealth", 4, (), 7, search={"alias": ("HealthKit",)}),
    Source(13, 36, "Health Connect", "healthconnect", 4, (), 8),
    # -- health: one patient portal (service 20), many providers --------------------------
    Source(
        401,
        20,
        "US - Cedars-Sinai Health System",
        "openepic?provider=cedarssinai",
        2,
        _US,
        4,
        service_name="OpenEpic",
        service_reference="openepic",
        provider_id=13,
        search={"medicalCenter": ("Cedars-Sinai Medical Center",)},
        address={"city": "Los Angeles", "zipCode": "90048"},
    ),
    Source(
        402,
        20,
        "US - Geisinger",
        "openepic?provider=geisinger",
        2,
        _US,
        4,
        service_name="OpenEpic",
        service_reference="openepic",
        provider_id=22,
        search={"medicalCenter": ("Geisinger Medical Center",)},
        address={"city": "Danville", "zipCode": "17822"},
    ),
    Source(
        403,
        20,
        "US - Boston Medical Center",
        "openepic?provider=bostonmedicalcenter",
        2,
        _US,
        4,
        service_name="OpenEpic",
        service_reference="openepic",
        provider_id=172,
        search={"medicalCenter": ("Boston Medical Center",), "abbreviation": ("BMC",)},
        address={"city": "Boston", "zipCode": "02118"},
    ),
    Source(
        501,
        50,
        "Huisartsenpraktijk De Linde",
        "medmij?provider=delinde",
        2,
        _NL,
        5,
        service_name="MedMij",
        service_reference="medmij",
        search={"practitioner": ("Dr. A. de Vries", "Dr. J. Bakker")},
        address={"city": "Utrecht", "zipCode": "3511 AB"},
    ),
    Source(
        502,
        50,
        "Rijnstate Ziekenhuis",
        "medmij?provider=rijnstate",
        2,
        _NL,
        5,
        service_name="MedMij",
        service_reference="medmij",
        search={"medicalCenter": ("Rijnstate",)},
        address={"city": "Arnhem", "zipCode": "6815 AD"},
    ),
    Source(
        503,
        50,
        "Apotheek Centraal",
        "medmij?provider=apotheekcentraal",
        2,
        _NL,
        5,
        service_name="MedMij",
        service_reference="medmij",
        search={"practitioner": ("Apotheker M. Jansen",)},
        address={"city": "Amsterdam", "zipCode": "1012 AB"},
    ),
    Source(
        302,
        302,
        "Patients Know Best",
        "pkb",
        2,
        _UK,
        1,
        homepage="https://patientsknowbest.com",
        search={"abbreviation": ("PKB",)},
    ),
    # -- finance -------------------------------------------------------------------
    Source(6003, 6003, "Barclays", "barclays", 3, _UK, 2, homepage="https://www.barclays.co.uk"),
    Source(6004, 6004, "HSBC UK", "hsbc", 3, _UK, 2, homepage="https://www.hsbc.co.uk"),
    Source(6005, 6005, "Starling Bank", "starling", 3, _UK, 2, search={"alias": ("Starling",)}),
    Source(6006, 6006, "Revolut", "revolut", 3, _EU, 2, homepage="https://www.revolut.com"),
    Source(6101, 6101, "Chase", "chase", 3, _US, 3, homepage="https://www.chase.com"),
    Source(
        6102,
        6102,
        "Bank of America",
        "bankofamerica",
        3,
        _US,
        3,
        search={"abbreviation": ("BofA",)},
    ),
    Source(6103, 6103, "Wells Fargo", "wellsfargo", 3, _US, 3, status="blocked"),
    Source(6999, 6999, "Sandbox Demo Bank", "demobank", 3, (), 2, status="sampledataonly"),
    # -- push: sources that take data written by apps ----------------------------------
    Source(901, 901, "MedMij upload", "medmijupload", 2, _NL, 5, type=2),
    Source(902, 902, "Workout upload", "workoutupload", 4, (), 9, type=2),
)

CATEGORY_BY_ID = {c.id: c for c in CATEGORIES}
COUNTRY_BY_ID = {c.id: c for c in COUNTRIES}
PLATFORM_BY_ID = {p.id: p for p in PLATFORMS}
TYPE_BY_ID = {t["id"]: t for t in TYPES}
SOURCE_BY_REFERENCE = {s.reference: s for s in SOURCES}


def source_wire(s: Source) -> dict[str, Any]:
    """The full ``POST discovery/sources`` object of one source (before ``include``)."""
    category = CATEGORY_BY_ID[s.category]
    platform = PLATFORM_BY_ID[s.platform]
    web = platform.authorisation == "saas"
    wire: dict[str, Any] = {
        "id": s.id,
        "name": s.name,
        "reference": s.reference,
        "publishedStatus": s.status,
        "publishedDate": PUBLISHED_MS,
        "onboardable": web and s.type == 1 and s.status in ("approved", "sampledataonly"),
        "dynamic": False,
        "resource": {"url": _icon("sources", s.reference)["url"], "mimetype": "image/png"},
        "service": {
            "id": s.service_id,
            "name": s.service_name or s.name,
            "reference": s.service_reference or s.reference,
            "publishedStatus": "pending" if s.status == "pending" else "approved",
            "publishedDate": PUBLISHED_MS,
        },
        "category": [{k: category.wire()[k] for k in ("id", "name", "reference")}],
        "country": [
            {"id": c, "code": COUNTRY_BY_ID[c].code, "name": COUNTRY_BY_ID[c].name}
            for c in s.countries
        ],
        "platform": [{k: platform.wire()[k] for k in ("id", "name", "reference")}],
        "type": [dict(TYPE_BY_ID[s.type])],
        "json": {
            "authorisation": {
                "type": platform.authorisation,
                "mode": "browser",
                "reauthType": "immediate",
            },
            "homepageURL": s.homepage or f"https://www.{s.reference.split('?')[0]}.com",
            "sync": {"type": {"options": ["manual"]}},
        },
    }
    if s.provider_id is not None:
        wire["providerId"] = s.provider_id
    for key, values in s.search.items():
        wire[key] = list(values)
    if s.address:
        wire["address"] = dict(s.address)
    return wire


def service_v1(s: Source) -> dict[str, Any]:
    """One entry of the older ``GET discovery/services`` answer (API v1.5 to v1.7)."""
    wire = source_wire(s)
    status = "available" if s.status == "approved" else "unavailable"
    availability = {"availability": "production", "currentStatus": status}
    entry: dict[str, Any] = {
        "id": s.id,
        "serviceId": s.service_id,
        "name": s.name,
        "reference": s.reference,
        "publishedStatus": s.status,
        "publishedDate": PUBLISHED_MS,
        "serviceGroups": [{"id": s.category}],
        "countries": [{"id": c} for c in s.countries],
        "resources": [{**_icon("services", s.reference), "height": 75, "width": 75}],
        "platform": {name: dict(availability) for name in ("web", "ios", "android")},
        "authorisation": {"mode": "browser", "reauthType": "immediate"},
        "sync": {"type": {"options": ["manual"]}},
        "homepageURL": wire["json"]["homepageURL"],
        "title": f"Add your {s.name}...",
        "subTitle": CATEGORY_BY_ID[s.category].sub_title,
    }
    if s.provider_id is not None:
        entry["providerId"] = s.provider_id
    return entry
