"""Procedurally drawn scenes whose captions and question/answer pairs come from the scene graph.

Why: the offline default needs image-text data whose every answer is known exactly, so held-out
VQA accuracy can be scored per question type against its chance level. A scene is drawn from a
seeded rng as a small graph (objects with shape, colour, size and grid cell), rendered with PIL,
and described in words generated from the same graph, so captions and answers are right by
construction.

A scene is a 224x224 RGB image on a light, nearly uniform background holding 1-`MAX_OBJECTS`
objects, each in a distinct cell of a 3x3 grid (positions `POSITIONS`, row-major), jittered
inside its cell but never leaving it, so objects never touch. The scenes are made to be
learnable by a tiny model on top of a frozen ImageNet CNN whose features form a 7x7 grid
(32 px per feature cell): objects span 1.5-2.3 feature cells (`SIZES`), colours are saturated
and far apart (`COLOURS`), and shapes are drawn without anti-aliasing so the pixel at an
object's centre is exactly its colour.

Two sources use them (kind `vlm`, MiniMind-V's schema: `conversations` plus `image_bytes`):

- `scene_captions`: "<image>\\nDescribe the image." (a few prompt templates) answered by a
  caption naming every object with its size, colour, shape and position; objects of the same
  colour and shape are counted ("two small blue squares at the top and on the right").
- `scene_vqa`: 1-3 question/answer turns about one scene, answers being exact short strings
  from `ANSWERS`; about `COMPARE_SHARE` of the records show two scenes with different object
  counts and ask which has more. Question types are drawn so that types, and answers within a
  type, come out about evenly (`_Balancer`): a model cannot score above chance by always giving
  the most common answer. Each record says what it asks in the evaluation fields of
  `minimind.data.records`: `answer_types` (the question type of each answer) and
  `answer_choices` (the type's whole answer set, so chance is 1 / len), which is all the
  evaluation reads.

Both sources draw their single images from one scene stream (`shared_scenes`), so the k-th
caption and the k-th one-image question record show the same picture; the two-image records
have their own scenes.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minimind.data.builtin.common import message, take

if TYPE_CHECKING:  # PIL is imported where images are drawn: the registry import stays light
    from PIL import Image, ImageDraw

IMAGE_SIZE = 224
GRID = 3
CELL = IMAGE_SIZE / GRID
MAX_OBJECTS = 4
SCENE_RECORDS = 3000  # how many records limit=None builds (the space is unbounded)
COMPARE_SHARE = 0.1
MAX_QA_TURNS = 3

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 205, 0),
    "purple": (140, 40, 190),
    "orange": (250, 125, 0),
}
SIZES = {"small": 46, "large": 72}  # bounding-box side in pixels; a cell is ~74.7 px
STAR_INNER_RATIO = 0.5
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
PLACES = ("at the top left", "at the top", "at the top right", "on the left", "in the center",
          "on the right", "at the bottom left", "at the bottom", "at the bottom right")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}

CAPTION_PROMPTS = ("Describe the image.", "What is in this picture?", "Describe this scene.",
                   "What can you see in the image?", "Give a short description of the image.")

# Placeholders: {shape} and {colour}; every template of a type has the same answer set.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("What colour is the {shape}?", "Which colour does the {shape} have?"),
    "shape": ("What shape is the {colour} object?", "Which shape is {colour}?"),
    "count": ("How many objects are there?", "How many shapes are in the image?",
              "How many {shape}s are there?"),
    "position": ("Where is the {colour} {shape}?", "In which part of the image is the "
                 "{colour} {shape}?"),
    "compare": ("Which image has more objects, the first or the second?",),
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": tuple(str(n) for n in range(1, MAX_OBJECTS + 1)),
    "position": POSITIONS,
    "compare": ("first", "second"),
}
QUESTION_TYPES: tuple[str, ...] = tuple(QUESTION_TEMPLATES)
IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major in the 3x3 grid
    center: tuple[int, int]  # pixel coordinates

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def place(self) -> str:
        """The position as a phrase: "at the top left", "on the right", "in the center"."""
        return PLACES[self.cell]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # in reading order (by cell)
    background: tuple[int, int, int]

    def count(self, **attributes: str) -> int:
        """How many objects have all the given attributes (e.g. shape="star")."""
        return len(self.matching(**attributes))

    def matching(self, **attributes: str) -> list[SceneObject]:
        return [o for o in self.objects
                if all(getattr(o, key) == value for key, value in attributes.items())]


# --- drawing -------------------------------------------------------------------------------

def random_scene(rng: random.Random, count: int | None = None) -> Scene:
    """A scene of `count` objects (1..MAX_OBJECTS drawn uniformly when None)."""
    count = rng.randint(1, MAX_OBJECTS) if count is None else count
    objects = []
    for cell in sorted(rng.sample(range(GRID * GRID), count)):
        size = rng.choice(tuple(SIZES))
        slack = max(0, int((CELL - SIZES[size]) / 2) - 1)  # jitter that stays inside the cell
        row, col = divmod(cell, GRID)
        center = (round((col + 0.5) * CELL) + rng.randint(-slack, slack),
                  round((row + 0.5) * CELL) + rng.randint(-slack, slack))
        objects.append(SceneObject(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), size, cell,
                                   center))
    grey = rng.randint(228, 248)
    background = tuple(min(255, grey + rng.randint(-6, 6)) for _ in range(3))
    return Scene(tuple(objects), background)


def render(scene: Scene) -> Image.Image:
    """The scene as a 224x224 RGB image (hard edges: no anti-aliasing)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj)
    return image


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x, y = obj.center
    half = SIZES[obj.size] / 2
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x - half, y - half, x + half, y + half), fill=fill)
    elif obj.shape == "square":  # a bit smaller than the box: its area is close to the others'
        side = 0.86 * half
        draw.rectangle((x - side, y - side, x + side, y + side), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - half), (x + half, y + half * 0.8), (x - half, y + half * 0.8)],
                     fill=fill)
    else:
        draw.polygon(_star_points(x, y, half), fill=fill)


def _star_points(x: float, y: float, radius: float) -> list[tuple[float, float]]:
    """Five-pointed star, point up; a fat inner radius keeps enough coloured pixels."""
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * STAR_INNER_RATIO
        angle = math.pi * (i / 5 - 0.5)
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    return points


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


# --- words ---------------------------------------------------------------------------------

def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene) -> str:
    """Every object with size, colour, shape and place; same colour+shape objects counted."""
    groups: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in scene.objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    phrases = []
    for (colour, shape), objs in groups.items():
        if len(objs) == 1:
            phrases.append(f"a {objs[0].size} {colour} {shape} {objs[0].place}")
            continue
        number, places = NUMBER_WORDS[len(objs)], _and_list([o.place for o in objs])
        if len({o.size for o in objs}) == 1:
            phrases.append(f"{number} {objs[0].size} {colour} {shape}s {places}")
        else:
            each = ", ".join(f"a {o.size} one {o.place}" for o in objs)
            phrases.append(f"{number} {colour} {shape}s ({each})")
    text = _and_list(phrases)
    return text[0].upper() + text[1:] + "."


def _ask(rng: random.Random, kind: str, answer: str, **slots: str) -> tuple[str, str]:
    """A question of `kind` from a template that only uses the given slots, with its answer."""
    templates = [t for t in QUESTION_TEMPLATES[kind]
                 if set(re.findall(r"{(\w+)}", t)) == set(slots)]
    return rng.choice(templates).format(**slots), answer


def questions(scene: Scene, rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """Every unambiguous (question, answer) about one scene, by question type."""
    shapes = Counter(o.shape for o in scene.objects)
    colours = Counter(o.colour for o in scene.objects)
    pairs = Counter((o.colour, o.shape) for o in scene.objects)
    total = str(len(scene.objects))
    return {
        "colour": [_ask(rng, "colour", o.colour, shape=o.shape)
                   for o in scene.objects if shapes[o.shape] == 1],
        "shape": [_ask(rng, "shape", o.shape, colour=o.colour)
                  for o in scene.objects if colours[o.colour] == 1],
        "count": [_ask(rng, "count", total)]
                 + [_ask(rng, "count", str(n), shape=shape) for shape, n in shapes.items()],
        "position": [_ask(rng, "position", o.position, colour=o.colour, shape=o.shape)
                     for o in scene.objects if pairs[(o.colour, o.shape)] == 1],
    }


_SLOT_PATTERNS = {"shape": "|".join(SHAPES), "colour": "|".join(COLOURS)}
_QUESTION_PATTERNS = [
    (kind, re.compile(re.sub(r"\\{(\w+)\\}", lambda m: f"(?:{_SLOT_PATTERNS[m.group(1)]})",
                             re.escape(template))))
    for kind, templates in QUESTION_TEMPLATES.items() for template in templates
]


def question_type(question: str) -> str | None:
    """The type ("colour", "shape", ...) of one of our question templates, None otherwise.

    `<image>` markers and surrounding whitespace are ignored, so a first user turn
    ("<image>\\nWhat colour is the star?") is recognised like a follow-up question.
    """
    text = question.replace(IMAGE_MARKER, "").strip()
    return next((kind for kind, pattern in _QUESTION_PATTERNS if pattern.fullmatch(text)), None)


class _Balancer:
    """Chooses among candidate questions so that types and answers stay about evenly used.

    Greedy: the least asked type available, then its least given answer (ties broken by the
    rng), so the answer distribution within a type tends to uniform whatever the scenes offer.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.asked: Counter[str | tuple[str, str]] = Counter()

    def pick(self, options: dict[str, list[tuple[str, str]]], exclude: set[str]
             ) -> tuple[str, str, str] | None:
        """(type, question, answer), or None when every question is excluded."""
        fresh = {kind: [qa for qa in pairs if qa[0] not in exclude]
                 for kind, pairs in options.items()}
        kinds = [kind for kind, pairs in fresh.items() if pairs]
        if not kinds:
            return None
        kind = min(kinds, key=lambda k: (self.asked[k], self.rng.random()))
        question, answer = min(fresh[kind],
                               key=lambda qa: (self.asked[(kind, qa[1])], self.rng.random()))
        self.asked[kind] += 1
        self.asked[(kind, answer)] += 1
        return kind, question, answer


# --- records -------------------------------------------------------------------------------

def shared_scenes(seed: int) -> Iterator[Scene]:
    """The scene stream both sources draw their single images from, in the same order.

    Captions and questions about the same pictures: the clean stage stores each image once
    and the features stage encodes it once, so the caption set costs no extra encoder time
    (the content-hash cache at work). The split is keyed on image hashes, so an image's
    caption and its questions always land in the same split.
    """
    rng = random.Random(f"scenes/{seed}")
    while True:
        yield random_scene(rng)


def caption_conversations(limit: int | None, seed: int
                          ) -> Iterator[tuple[tuple[Scene, ...], list[dict]]]:
    """(scenes, conversation) pairs of `scene_captions`; the scene graph is kept for checks."""
    rng, scenes = random.Random(f"scene_captions/{seed}"), shared_scenes(seed)

    def generate() -> Iterator[tuple[tuple[Scene, ...], list[dict]]]:
        while True:
            scene = next(scenes)
            prompt = f"{IMAGE_MARKER}\n{rng.choice(CAPTION_PROMPTS)}"
            yield (scene,), [message("user", prompt), message("assistant", caption(scene))]

    return take(generate(), SCENE_RECORDS if limit is None else limit)


def vqa_conversations(limit: int | None, seed: int
                      ) -> Iterator[tuple[tuple[Scene, ...], list[dict]]]:
    """(scenes, conversation) pairs of `scene_vqa`; the scene graph is kept for checks."""
    return ((scenes, conversation) for scenes, conversation, _ in _vqa_items(limit, seed))


def _vqa_items(limit: int | None, seed: int
               ) -> Iterator[tuple[tuple[Scene, ...], list[dict], list[str]]]:
    """(scenes, conversation, question type of each answer) of `scene_vqa`."""
    rng, scenes = random.Random(f"scene_vqa/{seed}"), shared_scenes(seed)
    balancer = _Balancer(rng)

    def generate() -> Iterator[tuple[tuple[Scene, ...], list[dict], list[str]]]:
        while True:
            if rng.random() < COMPARE_SHARE:
                yield _compare(rng)
                continue
            scene = next(scenes)
            options = questions(scene, rng)
            turns: list[dict] = []
            kinds: list[str] = []
            asked: set[str] = set()
            for _ in range(rng.randint(1, MAX_QA_TURNS)):
                picked = balancer.pick(options, asked)
                if picked is None:
                    break
                kind, question, answer = picked
                asked.add(question)
                kinds.append(kind)
                prefix = "" if turns else f"{IMAGE_MARKER}\n"
                turns += [message("user", prefix + question), message("assistant", answer)]
            yield (scene,), turns, kinds

    return take(generate(), SCENE_RECORDS if limit is None else limit)


def _compare(rng: random.Random) -> tuple[tuple[Scene, ...], list[dict], list[str]]:
    counts = rng.sample(range(1, MAX_OBJECTS + 1), 2)
    scenes = tuple(random_scene(rng, n) for n in counts)
    question = f"{IMAGE_MARKER}\n{IMAGE_MARKER}\n{QUESTION_TEMPLATES['compare'][0]}"
    answer = "first" if counts[0] > counts[1] else "second"
    return scenes, [message("user", question), message("assistant", answer)], ["compare"]


def evaluation_fields(kinds: list[str]) -> dict[str, list]:
    """The evaluation fields (`minimind.data.records`) of answers of these question types:
    each typed, with its type's whole answer set as the choices."""
    return {"answer_types": list(kinds), "answer_choices": [list(ANSWERS[k]) for k in kinds]}


def _record(scenes: tuple[Scene, ...], conversation: list[dict]) -> dict:
    """A MiniMind-V record: PNG bytes for one image, a list of them for several."""
    images = [png_bytes(render(scene)) for scene in scenes]
    return {"conversations": conversation,
            "image_bytes": images[0] if len(images) == 1 else images}


def build_scene_captions(limit: int | None, seed: int) -> Iterator[dict]:
    """Captioned scenes (`SCENE_RECORDS` when limit is None)."""
    for scenes, conversation in caption_conversations(limit, seed):
        yield _record(scenes, conversation)


def build_scene_vqa(limit: int | None, seed: int) -> Iterator[dict]:
    """Question/answer conversations about scenes (`SCENE_RECORDS` when limit is None), each
    with the evaluation fields of its answers (`evaluation_fields`)."""
    for scenes, conversation, kinds in _vqa_items(limit, seed):
        yield {**_record(scenes, conversation), **evaluation_fields(kinds)}
