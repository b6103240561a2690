"""Which of the versions found on disk a model wants served (TF Serving's ServableVersionPolicy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Latest:
    num_versions: int = 1


@dataclasses.dataclass(frozen=True)
class All:
    pass


@dataclasses.dataclass(frozen=True)
class Specific:
    versions: frozenset[int]


VersionPolicy = Latest | All | Specific


def select(policy: VersionPolicy, found: Iterable[int]) -> list[int]:
    """The aspired versions among `found`, in ascending order."""
    versions = sorted(set(found))
    if isinstance(policy, All):
        return versions
    if isinstance(policy, Specific):
        return [v for v in versions if v in policy.versions]
    return versions[-max(policy.num_versions, 1):] if versions else []
