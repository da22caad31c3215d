"""Reading a model's versions from the server for the version table: a page at a time, newest
first, with the server's keyset pagination (`before`), and what changed since the table's
newest row (`fetch_model_changes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import lmvp

# Versions per page as the table scrolls, and while looking for new ones.
PAGE_SIZE = 200


@dataclass(frozen=True)
class VersionPage:
    """A page of a model's versions, newest first; `next` is the cursor of the following page
    (pass it as `before`), None on the last page."""

    versions: list[lmvp.Version]
    next: int | None


def fetch_version_page(
    client: lmvp.Client, project: str, model: str, *, before: int | None, limit: int
) -> VersionPage:
    """One page of the model's versions numbered below `before` (all, if None), newest first.

    Blocking: call it off the UI thread. Raises the client's `LMVPError`s."""
    versions = client.versions(f"{project}/{model}", limit=limit, before=before)
    # A full page may have more below it; a short one is the last.
    return VersionPage(versions, versions[-1].number if len(versions) == limit else None)


@dataclass(frozen=True)
class ModelChanges:
    """What changed in a model since the table last looked: versions newer than its newest row,
    and where every alias points now."""

    new_versions: list[lmvp.Version]
    aliases: dict[int, tuple[str, ...]]


def fetch_model_changes(
    client: lmvp.Client, project: str, model: str, *, newer_than: int
) -> ModelChanges:
    """The versions numbered above `newer_than`, newest first, and the model's aliases by version
    number. Blocking: call it off the UI thread."""
    new: list[lmvp.Version] = []
    before: int | None = None
    while True:
        page = fetch_version_page(client, project, model, before=before, limit=PAGE_SIZE)
        fresh = [v for v in page.versions if v.number > newer_than]
        new.extend(fresh)
        if len(fresh) < len(page.versions) or page.next is None or page.next <= newer_than + 1:
            break
        before = page.next
    by_version: dict[int, list[str]] = {}
    for alias in client.aliases(f"{project}/{model}"):
        by_version.setdefault(alias.version, []).append(alias.name)
    return ModelChanges(new, {n: tuple(sorted(names)) for n, names in by_version.items()})


__all__ = ["PAGE_SIZE", "ModelChanges", "VersionPage", "fetch_model_changes", "fetch_version_page"]
