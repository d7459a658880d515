"""Prompt -> layout planners for multi-concept images: one interface, a rule-based default, an LLM option.

`RuleBasedPlanner` needs no network and always gives the same layout for the same prompt, so it is the default
when no LLM is configured. It cuts the prompt at separators (`,` `;` `&` `and` `with` `next to` `beside`);
each mention of a bank concept becomes a region whose prompt is the mention's own words (`a fluffy <dog1> dog`)
plus the shared scene, and the scene with the mentions removed becomes the background prompt:

    "<dog1> and <cat1> playing on a beach at sunset"
    -> background "playing on a beach at sunset"
    -> "<dog1>, playing on a beach at sunset" (left) | "<cat1>, playing on a beach at sunset" (right)

Boxes: one column per concept up to three, a grid beyond; "on the left"/"to the right of"-style hints in a
concept's clause move it to that side. Tokens that are not in the bank stay plain text.
`LLMPlanner` lives in `llm_planner` (it talks to any OpenAI-compatible server with the standard library alone).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...bank.trigger_tokens import trigger_pattern
from ...errors import InvalidInputError
from ..layout import MAX_REGIONS, Box, Layout, Region, validate_layout
from .planner import Planner

MARGIN = 0.04  # gap between boxes and around the canvas, as a fraction of the canvas

_SEPARATOR = re.compile(r"\s*(,|;|&|\b(?:and|with|next\s+to|besides?)\b)\s*", re.IGNORECASE)
_HINT = re.compile(
    r"\b(?:(?:on|to|at|in)\s+the\s+(?P<a>left|right)(?:[\s-]+(?:hand\s+)?side)?"
    r"|(?P<b>left|right)[\s-]+(?:hand\s+)?side)(?P<of>\s+of\b)?",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\s,;&()]+")
_WEIGHTED_GROUP = re.compile(r"\([^()]*\)")
# Words that end a concept's own phrase: the scene starts there ("<dog1> on a beach", "photo of <dog1>").
_STOP_WORDS = frozenset(
    "of in on at to from by near under over behind above below beneath inside into onto for is are was were be "  # noqa: SIM905
    "being has have sits sit stands stand lies lie looks look while the".split()
)
_ARTICLES = frozenset({"a", "an", "the", "my", "our", "two", "three"})


@dataclass(frozen=True)
class _Mention:
    token: str
    start: int  # span of the token (or of its whole weighted group, e.g. "(<dog1>:1.2)")
    end: int
    fixed: bool  # a weighted group is taken verbatim: no words are attached to it


def _overlaps(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(s < end and start < e for s, e in spans)


def _find_mentions(prompt: str, known_tokens: Sequence[str]) -> list[_Mention]:
    spans: list[tuple[int, int, str]] = []
    for token in sorted(set(known_tokens), key=len, reverse=True):  # longest first: <dog10> before <dog1>
        for match in trigger_pattern(token).finditer(prompt):
            if not _overlaps(*match.span(), [(s, e) for s, e, _ in spans]):
                spans.append((match.start(), match.end(), token))
    mentions = [_Mention(t, s, e, False) for s, e, t in sorted(spans)]
    for group in _WEIGHTED_GROUP.finditer(prompt):
        inside = [m for m in mentions if group.start() < m.start and m.end < group.end()]
        if len(inside) == 1:
            index = mentions.index(inside[0])
            mentions[index] = _Mention(inside[0].token, group.start(), group.end(), True)
    return mentions


def _clean_scene(text: str) -> str:
    """Rejoin what is left after removing mentions, dropping the separators that now dangle."""
    parts = _SEPARATOR.split(text)
    pieces, separators = parts[0::2], [*parts[1::2], ""]
    kept: list[str] = []
    pending = ""
    for piece, separator in zip(pieces, separators, strict=True):
        piece = re.sub(r"\s+", " ", piece).strip()
        piece = re.sub(r"(?:\s*\b(?:of|a|an|the))+$", "", piece, flags=re.IGNORECASE).strip()
        piece = re.sub(r"\(\s*\)", "", piece).strip()
        if piece:
            if kept:
                kept.append(pending)
            kept.append(piece)
            pending = separator
        elif kept:
            pending = ","  # the piece between two separators vanished: a comma reads right whatever was there
    out = ""
    for index, item in enumerate(kept):
        if index % 2 == 0:
            out += item
        else:
            item = re.sub(r"\s+", " ", item.lower())
            out += f"{item} " if item in {",", ";"} else f" {item} "
    return out.strip()


class RuleBasedPlanner(Planner):
    """Deterministic planner from prompt text alone.

    `jitter` (default 0, off) shifts each box by up to that fraction of the canvas, drawn from `seed`, for
    variety across seeds; with 0 the layout ignores the seed, so a new seed changes the image, not the layout.
    """

    def __init__(self, margin: float = MARGIN, jitter: float = 0.0, max_regions: int = MAX_REGIONS) -> None:
        if not 0.0 <= margin < 0.2 or not 0.0 <= jitter <= margin:
            raise InvalidInputError(f"margin must be in [0, 0.2) and jitter in [0, margin], got {margin}, {jitter}")
        self.margin = margin
        self.jitter = jitter
        self.max_regions = max_regions

    def __repr__(self) -> str:
        return f"RuleBasedPlanner(margin={self.margin}, jitter={self.jitter}, max_regions={self.max_regions})"

    def plan(self, prompt: str, known_tokens: Sequence[str], width: int, height: int, seed: int) -> Layout:
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be text, got {type(prompt).__name__}")
        mentions = _find_mentions(prompt, known_tokens)
        if len(mentions) > self.max_regions:
            raise InvalidInputError(
                f"The prompt mentions {len(mentions)} concepts; at most {self.max_regions} regions are supported. "
                "Mention fewer concepts or merge some into the background."
            )
        separators = [m.span(1) for m in _SEPARATOR.finditer(prompt) if not _inside_mention(m.span(1), mentions)]
        clause_of = _clause_index(separators)
        sides, hint_spans = _assign_hints(prompt, mentions, clause_of)
        phrases = [_phrase_span(prompt, m, mentions, separators, hint_spans) for m in mentions]
        removed = sorted([*phrases, *hint_spans])
        scene = _clean_scene(_cut(prompt, removed))
        regions = []
        for mention, (start, end), box in zip(mentions, phrases, self._boxes(sides, seed), strict=True):
            phrase = re.sub(r"\s+", " ", prompt[start:end]).strip()
            text = f"{phrase}, {scene}" if scene else phrase
            regions.append(Region(prompt=text, box=box, tokens=(mention.token,)))
        layout = Layout(width=width, height=height, background=scene, regions=tuple(regions))
        return validate_layout(layout, set(known_tokens), self.max_regions)

    def _boxes(self, sides: Sequence[str | None], seed: int) -> list[Box]:
        count = len(sides)
        if count == 0:
            return []
        if count == 1:  # a lone concept: a half-width box, centred unless the prompt puts it on one side
            columns, rows = 2, 1
            cells: list[tuple[float, int]] = [{"left": (0, 0), "right": (1, 0)}.get(sides[0] or "", (0.5, 0))]
        else:
            columns = count if count <= 3 else math.ceil(math.sqrt(count))
            rows = math.ceil(count / columns)
            cells = [(c, r) for r in range(rows) for c in range(columns)][:count]  # reading order
        m = self.margin
        cell_w = (1.0 - (columns + 1) * m) / columns
        cell_h = (1.0 - (rows + 1) * m) / rows
        # Left-hinted concepts take the leftmost free cells, right-hinted the rightmost, the rest reading order.
        slot: dict[int, tuple[float, int]] = {}
        for index in (i for i, s in enumerate(sides) if s == "left"):
            slot[index] = min(cells, key=lambda c: (c[0], c[1]))
            cells.remove(slot[index])
        for index in (i for i, s in enumerate(sides) if s == "right"):
            slot[index] = max(cells, key=lambda c: (c[0], -c[1]))
            cells.remove(slot[index])
        for index in (i for i, s in enumerate(sides) if s is None):
            slot[index] = cells.pop(0)
        rng = random.Random(seed)
        boxes = []
        for index in range(count):
            column, row = slot[index]
            dx, dy = (rng.uniform(-self.jitter, self.jitter) for _ in range(2)) if self.jitter else (0.0, 0.0)
            x0 = m + column * (cell_w + m) + dx
            y0 = m + row * (cell_h + m) + dy
            boxes.append((round(x0, 6), round(y0, 6), round(x0 + cell_w, 6), round(y0 + cell_h, 6)))
        return boxes


def _inside_mention(span: tuple[int, int], mentions: Sequence[_Mention]) -> bool:
    return _overlaps(*span, [(m.start, m.end) for m in mentions])


def _clause_index(separators: Sequence[tuple[int, int]]) -> Callable[[int], int]:
    """Function: character position -> index of the clause (text between separators) it lies in."""
    cuts = [s for s, _ in separators]
    return lambda position: sum(1 for cut in cuts if cut < position)


def _assign_hints(
    prompt: str, mentions: Sequence[_Mention], clause_of: Callable[[int], int]
) -> tuple[list[str | None], list[tuple[int, int]]]:
    """Side per mention from left/right hints in its clause, and the hint spans to cut from the scene.

    A hint belongs to the nearest concept before it in the clause, else the one after it; `X left of Y` also
    puts Y on the other side. Hints in clauses without a concept describe the scene and are left alone.
    """
    sides: list[str | None] = [None] * len(mentions)
    used: list[tuple[int, int]] = []
    for hint in _HINT.finditer(prompt):
        if _inside_mention(hint.span(), mentions):
            continue
        side = (hint.group("a") or hint.group("b")).lower()
        clause = clause_of(hint.start())
        same = [i for i, m in enumerate(mentions) if clause_of(m.start) == clause]
        before = [i for i in same if mentions[i].end <= hint.start()]
        after = [i for i in same if mentions[i].start >= hint.end()]
        if not same:
            continue
        used.append(hint.span())
        owner = before[-1] if before else after[0]
        if sides[owner] is None:
            sides[owner] = side
        if hint.group("of") and before and after and sides[after[0]] is None:
            sides[after[0]] = "right" if side == "left" else "left"
    return sides, used


def _phrase_span(
    prompt: str,
    mention: _Mention,
    mentions: Sequence[_Mention],
    separators: Sequence[tuple[int, int]],
    hints: Sequence[tuple[int, int]],
) -> tuple[int, int]:
    """The mention plus its own words: leading article/adjectives and one trailing class noun (`a <dog1> dog`)."""
    if mention.fixed:
        return mention.start, mention.end
    blocked = [*separators, *hints, *((m.start, m.end) for m in mentions if m is not mention)]
    words = [w for w in _WORD.finditer(prompt) if not _overlaps(*w.span(), [*blocked, (mention.start, mention.end)])]
    start, end = mention.start, mention.end
    for word in reversed([w for w in words if w.end() <= start]):
        gap = prompt[word.end() : start]
        lowered = word.group().lower()
        if gap.strip() or _overlaps(word.end(), start, blocked) or not _attachable(lowered, leading=True):
            break
        start = word.start()
    following = [w for w in words if w.start() >= end]
    if following and not prompt[end : following[0].start()].strip():
        word = following[0].group().lower()
        if not _overlaps(end, following[0].start(), blocked) and _attachable(word, leading=False):
            end = following[0].end()
    return start, end


def _attachable(word: str, leading: bool) -> bool:
    if not word.isalpha():
        return False
    if leading and word in _ARTICLES:
        return True
    return word not in _STOP_WORDS and word not in _ARTICLES and not word.endswith("ing")


def _cut(prompt: str, spans: Sequence[tuple[int, int]]) -> str:
    out, position = [], 0
    for start, end in spans:
        out.append(prompt[position:start])
        out.append(" ")
        position = max(position, end)
    out.append(prompt[position:])
    return "".join(out)
