"""A hostile library: list entries a client must deliver or report, never drop in silence.

Applied on top of the served library (generated or given) when the settings ask:
``nonpositive_dates`` files are listed with an ``updatedDate`` of 0 or below, and
``unsafe_names`` adds copies of a real file under names that are empty, absolute,
contain ``..`` segments, a backslash or a control character, or are longer in total
than any file system allows. Each hostile entry is served like any other file (the
name arrives percent-encoded as one path segment), so the ground truth covers it.
"""

from __future__ import annotations

import dataclasses
import random

from .library import Library
from .settings import SandboxSettings

#: updatedDate values given to ``nonpositive_dates`` files, in turn.
NONPOSITIVE_DATES: tuple[int, ...] = (0, -1, -86_400_000 * 365)

#: Names a client must refuse before they reach a request URL or a file path. Names that
#: would land outside a sink's directory if obeyed contain ``escaped-``, so a leak is
#: easy to find.
UNSAFE_NAMES: tuple[str, ...] = (
    "",
    ".",
    "..",
    "a/../../escaped-1.json",
    "../escaped-2.json",
    "/tmp/escaped-3.json",  # noqa: S108 - a name a client must refuse, never opened here
    "dir\\..\\escaped-4.json",
    "escaped-5\n.json",
    "seg/" * 1100 + "escaped-6.json",  # 4,414 bytes in short segments: past PATH_MAX
)


def harden(library: Library, settings: SandboxSettings) -> Library:
    """``library`` with the hostile entries the settings ask for (itself if none)."""
    if not settings.nonpositive_dates and not settings.unsafe_names:
        return library
    files = list(library.files)
    rng = random.Random(f"privateshare-sandbox:{settings.seed}:hostile")  # noqa: S311
    chosen = rng.sample(range(len(files)), min(settings.nonpositive_dates, len(files)))
    for turn, index in enumerate(sorted(chosen)):
        date = NONPOSITIVE_DATES[turn % len(NONPOSITIVE_DATES)]
        f = files[index]
        versions = tuple(dataclasses.replace(v, updated_date=date) for v in f.versions)
        files[index] = dataclasses.replace(f, versions=versions)
    if settings.unsafe_names:
        small = [f for f in library.files if not f.latest.is_large]
        if not small:
            raise ValueError("unsafe_names needs at least one ordinary file to copy (files >= 1)")
        taken = {f.name for f in files}
        for k, name in enumerate(UNSAFE_NAMES):
            if name not in taken:
                source = small[k % len(small)]
                files.append(dataclasses.replace(source, name=name, versions=(source.latest,)))
    return Library(library.seed, library.accounts, tuple(files), library.partial_account_id)
