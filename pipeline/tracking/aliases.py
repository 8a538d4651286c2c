"""Where the registry's aliases belong, decided from the versions' scores, comparison keys and the moves people
made alone (no store here), so that every evaluation, however concurrent, computes the same answer and why."""

from __future__ import annotations

from dataclasses import dataclass, field

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE = "eval_dice_mean"  # the evaluation's mean Dice over classes and validation cases


@dataclass(frozen=True)
class Version:
    number: int
    score: float | None
    key: str | None
    parts: dict[str, str] = field(default_factory=dict, compare=False)
    placed: frozenset[str] = field(default=frozenset(), compare=False)  # the aliases medseg ever put on it


@dataclass(frozen=True)
class Move:
    """A person's move of an alias: only versions newer than ``newest`` (the newest then) can take it back."""

    version: int
    newest: int
    by: str
    at: str
    note: str = ""


def best_of(versions: list[Version]) -> Version:
    """The highest score; of equal scores, the older version."""
    return max(versions, key=lambda v: (v.score, -v.number))


def kept_by_move(scored: list[Version], move: Move | None) -> Version | None:
    """Where a person's move leaves an alias: on the version moved to, unless a later version beats it on its key."""
    moved = next((v for v in scored if move and v.number == move.version), None)
    if moved is None:
        return None
    later = [v for v in scored if v.number > move.newest and v.key == moved.key and v.score > moved.score]
    return best_of([moved, *later])


def targets(versions: list[Version], champion: int | None, moves: dict[str, Move] | None = None) -> dict[str, int]:
    """Where the aliases belong: ``champion`` on the best score within the comparison key of the current champion
    (the oldest scored version's while there is none), ties to the older version; ``challenger`` on the newest other
    scored version. A person's move holds until a later version beats it on its key. A function of the versions and
    the recorded moves alone, so every evaluation computes the same answer."""
    scored, moves = [v for v in versions if v.score is not None], moves or {}
    if not scored:
        return {}
    current = next((v for v in scored if v.number == champion), scored[0])
    best = kept_by_move(scored, moves.get(CHAMPION)) or best_of([v for v in scored if v.key == current.key])
    challenger = kept_by_move(scored, moves.get(CHALLENGER))
    if challenger is None or challenger.number == best.number:
        others = [v for v in scored if v.number != best.number]
        challenger = others[-1] if others else None
    return {CHAMPION: best.number, **({CHALLENGER: challenger.number} if challenger else {})}


def differing_parts(own: Version, other: Version) -> str:
    return ", ".join(k for k in sorted(own.parts) if own.parts[k] != other.parts.get(k)) or "its parts"


def rival_of(own: Version, versions: list[Version], moves: dict[str, Move]) -> Version | None:
    """Whom a champion beat: the version a person had moved it to, else the best other one on its key."""
    move = moves.get(CHAMPION)
    moved = next((v for v in versions if move and v.number == move.version != own.number), None)
    rivals = [v for v in versions if v.number != own.number and v.key == own.key and v.score is not None]
    return moved or (best_of(rivals) if rivals else None)


def reason_for(
    number: int, target: dict[str, int], versions: list[Version], moves: dict[str, Move]
) -> tuple[str, str, float | None]:
    """This version's alias, why, and the score it was measured against."""
    by_number = {v.number: v for v in versions}
    own, champion = by_number[number], by_number[target[CHAMPION]]
    alias = next((a for a, n in target.items() if n == number), "none (a newer version is challenger)")
    on_key, move = f"on comparison key {own.key}", moves.get(alias)
    if move and move.version == number:
        note = f" ({move.note})" if move.note else ""
        why = f"moved here by {move.by} at {move.at}{note}; kept until a person moves it or a later version scores better {on_key}"
        return alias, why, None
    if alias == CHAMPION:
        rival = rival_of(own, versions, moves)
        if rival is None:
            return CHAMPION, f"the only version scored {on_key}", None
        return (
            CHAMPION,
            f"{SCORE} {own.score:.4f} beats version {rival.number}'s {rival.score:.4f} {on_key}",
            rival.score,
        )
    if champion.key != own.key:
        differs = differing_parts(own, champion)
        why = f"scored {on_key}, the champion (version {champion.number}) on {champion.key}: not compared (differs in {differs})"
        return alias, why, champion.score
    why = f"{SCORE} {own.score:.4f} does not beat version {champion.number}'s {champion.score:.4f} {on_key}"
    return alias, why, champion.score
