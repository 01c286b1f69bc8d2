"""Experiments: who sees which arm.

Assignment is deterministic and sticky, with no state to store. A user's key is
the 64-bit BLAKE2b hash of ``f"{salt}:{user_id}"``. The holdout (default content)
takes the users whose holdout draw, a uniform number in (0, 1) mixed from the key,
falls below the holdout share. Every other user goes to the arm with the smallest
``-ln(u_arm) / weight``, where ``u_arm`` is a uniform number mixed from the key and
the arm's *name* (weighted rendezvous hashing, an exponential race): arm i wins
with probability ``w_i / sum(w)`` exactly, not rounded to buckets. What that
guarantees:

- the same user, salt and allocation give the same arm in every process, on every
  machine and Python version (no ``hash()``, no random state);
- the order of the arms does not matter, and multiplying every weight by one factor
  changes nothing;
- when weights change, a user moves from arm a to arm b only if b's weight grew by
  a larger factor than a's (an added arm grew from 0, a removed one fell to 0). So
  raising one arm's weight moves users only *into* that arm, adding an arm moves
  users only into the new arm, and lowering, zeroing or removing an arm moves only
  *its* users; in these one-arm changes the share of users who move is exactly the
  change in that arm's share (in expectation), the least any scheme can move;
- the holdout draw is independent of the arm draw: growing the holdout only moves
  users into it, shrinking it only lets holdout users out, and a user outside the
  holdout before and after keeps their arm (under unchanged weights);
- a new salt reshuffles everyone: use one to start a fresh experiment.

`bucket` exposes the same hash cut into ``buckets`` equal buckets for coarse uses
(rollout percentages, sharding, logs). What the numbers say is
`engine.experiments.statistics`.

Examples
--------
>>> exp = Experiment("subject_line", Allocation((Arm("control"), Arm("emoji")), holdout=0.1))
>>> [assign(f"user-{i}", exp) for i in range(9)]
['control', 'emoji', 'emoji', 'control', 'control', 'control', 'emoji', 'holdout', 'holdout']
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence

import msgspec
import numpy as np

#: What `assign` returns for a user in the holdout (who sees default content).
HOLDOUT = "holdout"
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


# --------------------------------------------------------------------------- assignment


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def bucket(user_id: str, salt: str, buckets: int = 10_000) -> int:
    """The bucket, in ``range(buckets)``, of ``user_id`` under ``salt``: stable everywhere.

    >>> bucket("user-1", "exp-a"), bucket("user-1", "exp-a"), bucket("user-1", "exp-b")
    (7368, 7368, 9046)
    """
    if not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be a positive int, got {buckets!r}")
    return _hash64(f"{salt}:{user_id}") % buckets


def _keys(user_ids: Sequence[str], salt: str) -> np.ndarray:
    digests = b"".join(hashlib.blake2b(f"{salt}:{u}".encode(), digest_size=8).digest() for u in user_ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _uniform(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, then the top 53 bits as a float strictly inside (0, 1)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


_M64 = (1 << 64) - 1


def _uniform_one(z: int) -> float:
    """`_uniform` for one key, in plain Python ints (one numpy call costs microseconds; this is ~1 µs)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return ((z >> 11) + 0.5) * 2.0**-53


@functools.lru_cache(maxsize=4096)
def _label_key(text: str) -> int:
    return _hash64(text)


@functools.lru_cache(maxsize=4096)
def _arm_keys(salt: str, names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(_hash64(f"{salt}:arm:{name}") for name in names)


def _race_one(key: int, salt: str, names: Sequence[str], weights: Sequence[float]) -> int:
    """`_race` for one key: the index of the winning label."""
    best, best_score = 0, math.inf
    for i, (label_key, weight) in enumerate(zip(_arm_keys(salt, tuple(names)), weights)):
        if weight <= 0:
            continue
        score = -math.log(_uniform_one(key ^ label_key)) / weight
        if score < best_score:
            best, best_score = i, score
    return best


def _race(keys: np.ndarray, salt: str, names: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """Index of the winning label per key: weighted rendezvous hashing."""
    label_keys = np.array([_hash64(f"{salt}:arm:{name}") for name in names], dtype=np.uint64)
    u = _uniform(keys[:, None] ^ label_keys[None, :])
    with np.errstate(divide="ignore"):
        scores = -np.log(u) / np.asarray(weights, dtype=np.float64)
    return scores.argmin(axis=1)


class Arm(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One variant of an experiment; ``weight`` is relative (0 pauses the arm)."""

    name: str
    weight: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or self.name == HOLDOUT:
            raise ValueError(f"an arm name must be a non-blank string other than {HOLDOUT!r}, got {self.name!r}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"arm {self.name!r}: weight must be finite and >= 0, got {self.weight}")


class Allocation(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The arms with their weights, and the share of users held out on default content."""

    arms: tuple[Arm, ...]
    holdout: float = 0.0

    def __post_init__(self):
        names = [a.name for a in self.arms]
        if not names:
            raise ValueError("an allocation needs at least one arm")
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if not any(a.weight > 0 for a in self.arms):
            raise ValueError("at least one arm needs a weight above 0")
        if not (0.0 <= self.holdout < 1.0):
            raise ValueError(f"holdout is a share in [0, 1), got {self.holdout}")

    @property
    def shares(self) -> dict[str, float]:
        """The expected share of all users per arm, and of the holdout.

        >>> Allocation((Arm("a", 3), Arm("b", 1)), holdout=0.2).shares
        {'a': 0.6000000000000001, 'b': 0.2, 'holdout': 0.2}
        """
        total = sum(a.weight for a in self.arms)
        out = {a.name: (1.0 - self.holdout) * a.weight / total for a in self.arms}
        out[HOLDOUT] = self.holdout
        return out


class Experiment(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A named experiment; its ``salt`` (the name when empty) seeds assignment."""

    name: str
    allocation: Allocation
    salt: str = ""

    @property
    def seed(self) -> str:
        return self.salt or self.name


def assign_many(user_ids: Sequence[str], experiment: Experiment) -> list[str]:
    """The arm (or `HOLDOUT`) of each user, in one vectorized pass; same answers as `assign`."""
    seed, alloc = experiment.seed, experiment.allocation
    keys = _keys(user_ids, seed)
    picks = _race(keys, seed, [a.name for a in alloc.arms], [a.weight for a in alloc.arms])
    if alloc.holdout > 0:
        held = _uniform(keys ^ np.uint64(_hash64(f"{seed}:holdout"))) < alloc.holdout
        picks = np.where(held, len(alloc.arms), picks)
    labels = np.array([a.name for a in alloc.arms] + [HOLDOUT], dtype=object)
    return labels[picks].tolist()


def assign(user_id: str, experiment: Experiment) -> str:
    """The arm ``user_id`` sees in ``experiment``, or `HOLDOUT` (see the module notes for stickiness).

    >>> exp = Experiment("hero", Allocation((Arm("a", 1), Arm("b", 1))))
    >>> assign("user-7", exp) == assign("user-7", exp)
    True
    """
    # The same arithmetic as `assign_many`, on plain ints: a request assigns one user (a test pins them equal).
    seed, alloc = experiment.seed, experiment.allocation
    key = _hash64(f"{seed}:{user_id}")
    if alloc.holdout > 0 and _uniform_one(key ^ _label_key(f"{seed}:holdout")) < alloc.holdout:
        return HOLDOUT
    arms = alloc.arms
    return arms[_race_one(key, seed, [a.name for a in arms], [a.weight for a in arms])].name


def assign_factorial(user_id: str, salt: str, factors: dict[str, Sequence[str]]) -> dict[str, str]:
    """One level per factor, levels equally likely, factors independent (a salt per factor).

    Adding a level to a factor moves users only into the new level.

    >>> assign_factorial("user-1", "hero-v2", {"headline": ["short", "long"], "image": ["a", "b", "c"]})
    {'headline': 'short', 'image': 'c'}
    """
    out = {}
    for factor, levels in factors.items():
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"factor {factor!r} needs at least one level and no repeats, got {list(levels)}")
        factor_salt = f"{salt}:{factor}"
        out[factor] = levels[_race_one(_hash64(f"{factor_salt}:{user_id}"), factor_salt, levels, [1.0] * len(levels))]
    return out
