"""A small, offline stand-in for the upstream MiniMind world, for end-to-end tests.

Everything a preset would fetch from the Hugging Face Hub, made small and served from
loopback, so that a test can run `dvc repro` against it without a network and without any
builtin source:

- dataset files in upstream's exact file names and schemas (`jingyaogong/minimind_dataset`,
  `jingyaogong/minimind-v_dataset`, `jingyaogong/minimind-o_dataset`), generated from
  templates with varied slots (English and Chinese; every record distinct, and none a near
  duplicate of another under the clean stage's default MinHash settings);
- tiny randomly initialised `transformers` encoders saved with `save_pretrained` (a SigLIP
  vision tower, optionally SigLIP2, and Whisper), with their processor configs;
- a tiny upstream-style `.pth` (flat fp16 state dict, MiniMind-3 key names);
- an upstream-style tokenizer folder (byte-level BPE, MiniMind-3's 36 special tokens at ids
  0..35, a ChatML / Qwen3-style chat template);
- `FakeHub`: a loopback Hub that huggingface_hub and transformers download from when
  `HF_ENDPOINT` points at it (resolve URLs with the Hub's headers, LFS files through a
  redirect to a separate "CDN" origin, and the API routes transformers calls:
  repo info / revision, tree, paths-info, refs).

`build_world(root)` makes all of it at once and returns the repos to serve, the models under
the hub ids the presets name (e.g. `jingyaogong/siglip2-base-p32-256-ve`, `openai/whisper-base`)
unless told otherwise: on loopback only, so a preset applies unchanged.

    world = build_world(tmp / "world")
    with serve_hub(world.repos) as hub:
        env = stage_env(**hub.env(tmp / "hf_home"))   # for dvc repro / stage subprocesses
        hub.patch(monkeypatch, tmp / "hf_home")       # for huggingface_hub in this process
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

# --------------------------------------------------------------------------------------------
# Upstream names
# --------------------------------------------------------------------------------------------

TEXT_REPO = "jingyaogong/minimind_dataset"
VISION_REPO = "jingyaogong/minimind-v_dataset"
OMNI_REPO = "jingyaogong/minimind-o_dataset"
TEXT_FILES = ("pretrain_t2t_mini.jsonl", "sft_t2t_mini.jsonl", "dpo.jsonl")
VISION_FILES = ("pretrain_i2t.parquet", "sft_i2t.parquet")
OMNI_FILES = ("sft_t2a_mini.parquet", "sft_a2a_mini.parquet", "sft_i2t.parquet")

# MiniMind-3's added tokens, in id order (0..35); 0..20 are special, 21..35 are not.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|audio_start|>",
    "<|audio_end|>", "<|audio_pad|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<think>", "</think>", *(f"<|buffer{i}|>" for i in range(1, 10)),
)
NUM_SPECIAL = 21  # ids below this are special=true

MIMI_CODEBOOKS = 8
MIMI_FRAME_RATE = 12.5
MIMI_CODEBOOK_SIZE = 2048
SPK_EMB_DIM = 192
SAMPLE_RATE = 16_000

# --------------------------------------------------------------------------------------------
# Text: parallel English / Chinese sentence templates with slots
# --------------------------------------------------------------------------------------------

P = tuple[str, str]  # (English, Chinese)

POOLS: dict[str, list[P]] = {
    "name": [("Anna", "安娜"), ("Tomas", "托马斯"), ("Mei", "小梅"), ("Ravi", "拉维"),
             ("Lucia", "露西亚"), ("Omar", "奥马尔"), ("Hana", "花子"), ("Peter", "彼得"),
             ("Lin", "林琳"), ("Kofi", "科菲"), ("Sofia", "索菲亚"), ("Jun", "小俊"),
             ("Elena", "埃琳娜"), ("Marco", "马可"), ("Aiko", "爱子"), ("David", "大卫"),
             ("Ming", "周明"), ("Ines", "伊内丝"), ("Felix", "费利克斯"), ("Nadia", "娜迪亚")],
    "town": [("Millbrook", "米尔布鲁克"), ("Ashford", "阿什福德"), ("Riverton", "里弗顿"),
             ("Greenhill", "青山镇"), ("Stonebridge", "石桥镇"), ("Lakeside", "湖滨镇"),
             ("Maple Bay", "枫湾"), ("Westfield", "西田"), ("Northport", "北港"),
             ("Pinecrest", "松岭"), ("Clearwater", "清水镇"), ("Eastwood", "东林"),
             ("Harbourview", "望港"), ("Fairmont", "丰山"), ("Silverton", "银镇"),
             ("Oakdale", "橡谷")],
    "street": [("Elm", "榆树"), ("Mill", "磨坊"), ("Church", "教堂"), ("Harbour", "海港"),
               ("Station", "车站"), ("Garden", "花园"), ("Bridge", "大桥"), ("Market", "市场"),
               ("Orchard", "果园"), ("Castle", "城堡"), ("Willow", "柳树"), ("Chestnut", "栗树")],
    "morning": [("six", "六点"), ("half past six", "六点半"), ("seven", "七点"),
                ("half past seven", "七点半"), ("eight", "八点")],
    "evening": [("five", "五点"), ("six", "六点"), ("seven", "七点"), ("eight", "八点")],
    "bread": [("rye bread", "黑麦面包"), ("sourdough", "酸面包"), ("croissants", "牛角包"),
              ("sesame rolls", "芝麻小圆面包"), ("walnut loaf", "核桃面包"),
              ("steamed buns", "馒头")],
    "plant": [("tomatoes", "西红柿"), ("beans", "豆角"), ("mint", "薄荷"),
              ("sunflowers", "向日葵"), ("lavender", "薰衣草"), ("pumpkins", "南瓜"),
              ("garlic", "大蒜"), ("roses", "玫瑰"), ("chillies", "辣椒"), ("cabbages", "白菜")],
    "cold": [("winter", "冬天"), ("the coldest weeks of January", "一月最冷的几周"),
             ("late December", "十二月下旬")],
    "dish": [("vegetable soup", "蔬菜汤"), ("beef stew", "炖牛肉"),
             ("mushroom risotto", "蘑菇烩饭"), ("lentil curry", "扁豆咖喱"),
             ("tomato noodles", "番茄面"), ("fish porridge", "鱼片粥"),
             ("braised tofu", "红烧豆腐"), ("chicken broth", "鸡汤")],
    "ingredient": [("carrots", "胡萝卜"), ("onions", "洋葱"), ("potatoes", "土豆"),
                   ("ginger", "姜"), ("celery", "芹菜"), ("spinach", "菠菜"),
                   ("mushrooms", "蘑菇"), ("peas", "豌豆")],
    "spice": [("salt", "盐"), ("black pepper", "黑胡椒"), ("cumin", "孜然"),
              ("star anise", "八角"), ("thyme", "百里香"), ("paprika", "红椒粉"),
              ("cinnamon", "肉桂")],
    "minutes": [("twenty", "二十"), ("thirty", "三十"), ("forty", "四十"),
                ("forty-five", "四十五"), ("sixty", "六十"), ("ninety", "九十")],
    "instrument": [("violin", "小提琴"), ("piano", "钢琴"), ("flute", "长笛"),
                   ("guitar", "吉他"), ("cello", "大提琴"), ("erhu", "二胡"),
                   ("trumpet", "小号"), ("accordion", "手风琴")],
    "age": [("five", "五"), ("six", "六"), ("seven", "七"), ("eight", "八"), ("nine", "九"),
            ("ten", "十"), ("twelve", "十二")],
    "material": [("stone", "石头"), ("iron", "铁"), ("brick", "砖"), ("oak timber", "橡木"),
                 ("granite", "花岗岩"), ("steel", "钢材")],
    "exhibit": [("old clocks", "古钟"), ("ancient maps", "古地图"), ("ship models", "船模"),
                ("folk costumes", "民族服饰"), ("fossils", "化石"), ("bronze tools", "青铜器")],
    "direction": [("north", "北"), ("east", "东"), ("south", "南"), ("west", "西")],
    "hours": [("two", "两"), ("three", "三"), ("four", "四"), ("five", "五"), ("six", "六")],
    "crop": [("wheat", "小麦"), ("rice", "水稻"), ("corn", "玉米"), ("barley", "大麦"),
             ("rapeseed", "油菜"), ("cotton", "棉花"), ("sorghum", "高粱")],
    "count": [("twelve", "十二"), ("fifteen", "十五"), ("twenty", "二十"), ("thirty", "三十"),
              ("forty", "四十"), ("fifty", "五十")],
    "animal": [("heron", "苍鹭"), ("otter", "水獭"), ("fox", "狐狸"), ("kingfisher", "翠鸟"),
               ("beaver", "河狸"), ("wild duck", "野鸭"), ("deer", "鹿")],
    "fruit": [("apples", "苹果"), ("pears", "梨"), ("grapes", "葡萄"), ("persimmons", "柿子"),
              ("plums", "李子"), ("chestnuts", "栗子"), ("figs", "无花果")],
    "object": [("clocks", "钟表"), ("radios", "收音机"), ("bicycles", "自行车"),
               ("sewing machines", "缝纫机"), ("typewriters", "打字机"), ("lamps", "台灯"),
               ("cameras", "相机")],
    "days": [("three", "三"), ("four", "四"), ("five", "五"), ("six", "六"), ("seven", "七")],
    "weekday": [("Monday", "星期一"), ("Tuesday", "星期二"), ("Wednesday", "星期三"),
                ("Thursday", "星期四"), ("Friday", "星期五"), ("Saturday", "星期六"),
                ("Sunday", "星期日")],
    "snow_month": [("November", "十一月"), ("December", "十二月"), ("January", "一月")],
    "drink": [("black tea", "红茶"), ("coffee", "咖啡"), ("soy milk", "豆浆"),
              ("hot chocolate", "热巧克力"), ("green tea", "绿茶")],
    "festival": [("harvest festival", "丰收节"), ("lantern festival", "元宵灯会"),
                 ("spring festival", "春节"), ("midsummer festival", "仲夏节"),
                 ("boat festival", "端午节")],
    "months": [("three", "三"), ("four", "四"), ("six", "六"), ("eight", "八"), ("ten", "十")],
    "colour": [("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("yellow", "黄色"),
               ("white", "白色"), ("orange", "橙色")],
}

# (English, Chinese) sentence pairs; {slot} or {slot2} (a second, different value of a pool).
SENTENCES: list[P] = [
    ("The bakery on {street} Street opens at {morning} in the morning, and by noon most of "
     "the {bread} is gone.",
     "{street}街上的面包店每天早上{morning}开门，不到中午{bread}就差不多卖完了。"),
    ("{name} keeps a small garden behind the house, where {plant} and {plant2} grow along "
     "the fence.",
     "{name}在屋后种了一小块园子，篱笆边长着{plant}和{plant2}。"),
    ("During {cold}, the lake near {town} freezes and children skate on it after school.",
     "每到{cold}，{town}附近的湖面就会结冰，孩子们放学后在冰上滑行。"),
    ("A good {dish} needs fresh {ingredient}, a little {spice}, and about {minutes} minutes "
     "of slow cooking.",
     "做一道好吃的{dish}，需要新鲜的{ingredient}、少许{spice}，再用小火慢慢炖上{minutes}分钟。"),
    ("{name} started to learn the {instrument} at the age of {age} and still practises "
     "every evening.",
     "{name}{age}岁开始学习{instrument}，到现在每天晚上还要练习一会儿。"),
    ("The old bridge in {town} was built from {material}, and engineers inspect it every "
     "few years.",
     "{town}的老桥是用{material}建成的，工程师每隔几年都会来检查一次。"),
    ("Most visitors to the museum in {town} spend an hour in the hall of {exhibit}, the "
     "oldest part of the building.",
     "去{town}博物馆的游客大多会在{exhibit}展厅待上一个小时，那是整座建筑最古老的部分。"),
    ("When the wind comes from the {direction}, the fishermen of {town} stay at home and "
     "mend their nets.",
     "刮{direction}风的时候，{town}的渔民就待在家里修补渔网。"),
    ("The train from {town} to {town2} takes about {hours} hours and passes through fields "
     "of {crop}.",
     "从{town}到{town2}的火车大约要开{hours}个小时，沿途经过大片的{crop}田。"),
    ("{name} wrote a short letter to the council asking for more benches in the park on "
     "{street} Street.",
     "{name}给镇议会写了一封短信，希望在{street}街的公园里多放几张长椅。"),
    ("In early summer, bees visit the {plant} in every garden of {town}, carrying pollen "
     "from one yard to the next.",
     "初夏时节，蜜蜂飞遍{town}各家园子里的{plant}，把花粉从一个院子带到另一个院子。"),
    ("The school in {town} started a reading club, and {count} students joined in the "
     "first week.",
     "{town}的学校成立了读书会，第一周就有{count}名学生报名参加。"),
    ("At dusk, a {animal} can often be seen near the river in {town}, looking for food "
     "among the reeds.",
     "傍晚时分，常能在{town}的河边看到{animal}在芦苇丛里寻找食物。"),
    ("The autumn market in {town} sells {fruit}, and the price drops when the harvest is "
     "large.",
     "{town}的秋季集市上卖{fruit}，收成好的年份价格会便宜不少。"),
    ("{name} repairs old {object} in a workshop that smells of oil and sawdust.",
     "{name}在一间满是机油和木屑味道的小作坊里修理旧{object}。"),
    ("Rain fell for {days} days in a row, so the football match on {street} Street was "
     "moved indoors.",
     "雨连续下了{days}天，原定在{street}街举行的足球赛只好改到室内。"),
    ("The recipe for {dish} came from the grandmother of {name}, who wrote it on the back "
     "of a postcard.",
     "这道{dish}的做法是{name}的奶奶传下来的，她把它写在一张明信片的背面。"),
    ("Every {weekday}, the library in {town} lends out telescopes so that families can "
     "watch the stars.",
     "每逢{weekday}，{town}图书馆都会借出望远镜，让一家人一起看星星。"),
    ("The first snow of the year usually arrives in {snow_month}, covering the hills "
     "around {town}.",
     "{town}周围的山上，每年的第一场雪通常在{snow_month}落下。"),
    ("A cup of {drink} with {bread} is a common breakfast in the cafes near the station "
     "of {town}.",
     "一杯{drink}配上{bread}，是{town}车站附近小餐馆里常见的早餐。"),
    ("The choir of {town} is rehearsing a new song for the {festival} next month.",
     "{town}的合唱团正在为下个月的{festival}排练一首新歌。"),
    ("{name} trained for {months} months before running the marathon along the coast.",
     "{name}练了{months}个月，才去参加沿海岸线举行的马拉松。"),
    ("The wooden boats in the harbour of {town} are painted {colour} and {colour2}, so "
     "their owners can spot them from far away.",
     "{town}港口里的木船被漆成{colour}和{colour2}，船主远远就能认出自己的船。"),
    ("The night market on {street} Street opens at {evening} in the evening and stays busy "
     "until after midnight.",
     "{street}街的夜市晚上{evening}开张，一直热闹到午夜以后。"),
    ("In the hills above {town}, shepherds move their sheep to higher pastures as soon as "
     "the grass turns green.",
     "{town}上方的山坡上，草一变绿，牧羊人就把羊群赶到更高的草场。"),
]

# Questions about one sentence (same index as SENTENCES), and their answers.
QUESTIONS: dict[int, tuple[P, P]] = {
    0: (("When does the bakery on {street} Street open?", "{street}街上的面包店几点开门？"),
        ("It opens at {morning} in the morning, and most of the {bread} is sold by noon.",
         "早上{morning}开门，{bread}不到中午就差不多卖完了。")),
    1: (("What grows along the fence in the garden of {name}?", "{name}的园子里篱笆边种着什么？"),
        ("{plant} and {plant2} grow along the fence.", "篱笆边长着{plant}和{plant2}。")),
    3: (("What does a good {dish} need?", "做好{dish}需要什么？"),
        ("Fresh {ingredient}, a little {spice}, and about {minutes} minutes of slow cooking.",
         "需要新鲜的{ingredient}、少许{spice}，再用小火炖{minutes}分钟左右。")),
    4: (("How old was {name} when learning the {instrument} began?",
         "{name}几岁开始学{instrument}？"),
        ("{name} started at the age of {age}.", "{name}{age}岁就开始学了。")),
    5: (("What is the old bridge in {town} made of?", "{town}的老桥是用什么建的？"),
        ("It was built from {material}.", "它是用{material}建成的。")),
    8: (("How long is the train ride from {town} to {town2}?", "从{town}坐火车到{town2}要多久？"),
        ("About {hours} hours, and the line passes fields of {crop}.",
         "大约{hours}个小时，沿途能看到{crop}田。")),
    11: (("How many students joined the reading club in {town} in the first week?",
          "{town}的读书会第一周有多少学生参加？"),
         ("{count} students joined in the first week.", "第一周有{count}名学生报名。")),
    12: (("Which animal looks for food near the river in {town} at dusk?",
          "傍晚在{town}河边找食物的是什么动物？"),
         ("A {animal}, searching among the reeds.", "是{animal}，它在芦苇丛里找吃的。")),
    13: (("What does the autumn market in {town} sell?", "{town}的秋季集市卖什么？"),
         ("It sells {fruit}, which get cheaper after a large harvest.",
          "卖{fruit}，收成好的时候会更便宜。")),
    14: (("What does {name} repair in the workshop?", "{name}在作坊里修什么？"),
         ("{name} repairs old {object}.", "{name}修理旧{object}。")),
    15: (("Why was the football match on {street} Street moved indoors?",
          "{street}街的足球赛为什么改到了室内？"),
         ("Because rain fell for {days} days in a row.", "因为雨连续下了{days}天。")),
    17: (("On which day does the library in {town} lend out telescopes?",
          "{town}图书馆哪天借出望远镜？"),
         ("Every {weekday}.", "每逢{weekday}。")),
    18: (("When does the first snow usually fall around {town}?",
          "{town}一带的第一场雪通常什么时候下？"),
         ("Usually in {snow_month}.", "通常在{snow_month}。")),
    20: (("What is the choir of {town} rehearsing for?", "{town}的合唱团在为什么排练？"),
         ("For the {festival} next month.", "为下个月的{festival}。")),
    21: (("How long did {name} train before the marathon?", "{name}跑马拉松前练了多久？"),
         ("{months} months.", "练了{months}个月。")),
    22: (("What colours are the boats in the harbour of {town}?", "{town}港口的船漆成了什么颜色？"),
         ("They are painted {colour} and {colour2}.", "船被漆成{colour}和{colour2}。")),
    23: (("When does the night market on {street} Street open?", "{street}街的夜市几点开张？"),
         ("At {evening} in the evening, and it stays busy past midnight.",
          "晚上{evening}开张，一直热闹到午夜以后。")),
}

SYSTEM_PROMPTS: list[P] = [
    ("You are MiniMind, a small and helpful assistant.", "你是MiniMind，一个乐于助人的小助手。"),
    ("You are a patient tutor. Answer briefly and clearly.",
     "你是一位耐心的老师，请简洁清楚地回答。"),
    ("You are a friendly assistant who answers in full sentences.",
     "你是一个友好的助手，回答时请用完整的句子。"),
]

EN_NUMBER = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
             "ten", "eleven", "twelve"]


@dataclass
class Fill:
    """One choice of slot values: render a template in either language."""

    values: dict[str, P]

    def en(self, template: str) -> str:
        text = template.format(**{k: v[0] for k, v in self.values.items()})
        text = re.sub(r"\ba ([aeiou])", r"an \1", text)
        return text[0].upper() + text[1:]

    def zh(self, template: str) -> str:
        return template.format(**{k: v[1] for k, v in self.values.items()})

    def both(self, pair: P) -> P:
        return self.en(pair[0]), self.zh(pair[1])


def _fill(rng: random.Random, *templates: str) -> Fill:
    slots = sorted({m for t in templates for m in re.findall(r"{(\w+)}", t)
                    if m.removesuffix("2") in POOLS})  # other slots are filled by the caller
    values: dict[str, P] = {}
    for slot in sorted(slots, key=lambda s: s.endswith("2")):
        pool = POOLS[slot.removesuffix("2")]
        taken = values.get(slot.removesuffix("2"))
        values[slot] = rng.choice([v for v in pool if v != taken])
    return Fill(values)


def _passage(rng: random.Random, lang: int, k: int, include: int | None = None
             ) -> tuple[str, Fill | None]:
    """k sentences from distinct templates (optionally including template `include`), each
    with its own slot values; returns the text and the fill of the included sentence."""
    others = [i for i in range(len(SENTENCES)) if i != include]
    picks = rng.sample(others, k - (include is not None))
    if include is not None:
        picks.insert(rng.randrange(len(picks) + 1), include)
    parts, kept = [], None
    for i in picks:
        fill = _fill(rng, *SENTENCES[i])
        parts.append(fill.both(SENTENCES[i])[lang])
        if i == include:
            kept = fill
    return ("" if lang == 1 else " ").join(parts), kept


def pretrain_records(n: int = 300, seed: int = 0) -> list[dict]:
    """`{"text"}` documents of 3-5 sentences each, alternating English and Chinese."""
    rng = random.Random(seed)
    return [{"text": _passage(rng, i % 2, rng.randint(3, 5))[0]} for i in range(n)]


def _tools(lang: int) -> list[dict]:
    weather = {"type": "function", "function": {
        "name": "get_weather",
        "description": ["Get the weather forecast of a town for one day.",
                        "查询某个城镇某一天的天气预报。"][lang],
        "parameters": {"type": "object", "properties": {
            "town": {"type": "string"}, "day": {"type": "string"}}, "required": ["town", "day"]}}}
    trains = {"type": "function", "function": {
        "name": "find_trains",
        "description": ["Find train departures between two towns.",
                        "查询两个城镇之间的火车班次。"][lang],
        "parameters": {"type": "object", "properties": {
            "origin": {"type": "string"}, "destination": {"type": "string"}},
            "required": ["origin", "destination"]}}}
    return [weather, trains]


PLANS: list[P] = [
    ("go fishing on the lake", "去湖上钓鱼"), ("visit the autumn market", "逛秋季集市"),
    ("paint the garden fence", "刷花园的篱笆"),
    ("take the children to the museum", "带孩子去博物馆"),
    ("walk up to the high pastures", "爬到山上的草场"), ("have a picnic in the park", "在公园野餐"),
    ("watch the choir rehearse", "看合唱团排练"), ("see the wooden boats", "看港口的木船"),
]
SKIES: list[tuple[P, P, P]] = [
    (("sunny", "晴"), ("it will be sunny", "晴天"),
     ("Take a hat and some water.", "记得带帽子和水。")),
    (("cloudy", "多云"), ("the sky will be cloudy", "多云"),
     ("A light jacket should be enough.", "穿一件薄外套就够了。")),
    (("light rain", "小雨"), ("there will be light rain", "有小雨"),
     ("Bring an umbrella just in case.", "最好带上一把伞。")),
    (("windy", "有风"), ("it will be windy", "风比较大"),
     ("Hold on to anything light, and dress warmly.", "注意保暖，轻的东西要拿好。")),
]


def _tool_conversation(rng: random.Random, lang: int) -> list[dict]:
    tools = _tools(lang)
    fill = _fill(rng, "{town} {town2} {weekday}")
    town, town2, day = (fill.values[k][lang] for k in ("town", "town2", "weekday"))
    system = {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)[lang],
              "tools": json.dumps(tools, ensure_ascii=False)}
    plan = rng.choice(PLANS)[lang]
    if rng.random() < 0.5:
        high, low = rng.randint(8, 30), rng.randint(-5, 7)
        sky, outlook, advice = rng.choice(SKIES)
        user = rng.choice([
            (f"I want to {plan} in {town} on {day}. What will the weather be like?",
             f"我打算{day}在{town}{plan}，那天天气怎么样？"),
            (f"Could you check the forecast for {town} on {day}? We plan to {plan}.",
             f"帮我查一下{town}{day}的天气预报好吗？我们准备{plan}。"),
            (f"Is {day} a good day to {plan} in {town}? Please look up the weather.",
             f"{day}适合在{town}{plan}吗？请查一下天气。")])[lang]
        call = {"name": "get_weather", "arguments": {"town": town, "day": day}}
        result = {"town": town, "day": day, "sky": sky[lang], "high_c": high, "low_c": low}
        answer = [f"On {day} {outlook[0]} in {town}, between {low} and {high} degrees Celsius. "
                  f"{advice[0]}",
                  f"{town}{day}{outlook[1]}，气温{low}到{high}摄氏度。{advice[1]}"][lang]
    else:
        times = sorted(rng.sample(range(6 * 60, 22 * 60, 5), 2))
        hhmm = [f"{t // 60:02d}:{t % 60:02d}" for t in times]
        user = rng.choice([
            (f"I need to {plan} in {town2}. Are there trains from {town} today?",
             f"我要去{town2}{plan}，今天有从{town}出发的火车吗？"),
            (f"When can I take a train from {town} to {town2}? I would like to {plan}.",
             f"从{town}到{town2}的火车几点开？我想去{plan}。")])[lang]
        call = {"name": "find_trains", "arguments": {"origin": town, "destination": town2}}
        result = {"departures": hhmm}
        answer = [f"Yes, trains leave {town} for {town2} at {hhmm[0]} and {hhmm[1]}.",
                  f"有的，从{town}开往{town2}的火车在{hhmm[0]}和{hhmm[1]}发车。"][lang]
    return [system, {"role": "user", "content": user},
            {"role": "assistant", "content": "",
             "tool_calls": json.dumps([call], ensure_ascii=False)},
            {"role": "tool", "content": json.dumps(result, ensure_ascii=False)},
            {"role": "assistant", "content": answer}]


# Two-step word problems: (question, answer) per language; {a} + {b} - {c} = {total}.
WORD_PROBLEMS: list[tuple[P, P]] = [
    (("{name} picked {a} {fruit} in an orchard near {town}, bought {b} more at the market and "
      "then gave {c} to the neighbours. How many {fruit} are left?",
      "{name}在{town}附近的果园摘了{a}个{fruit}，又在集市上买了{b}个，然后送给邻居{c}个。"
      "还剩多少个{fruit}？"),
     ("{name} has {total} {fruit} left.", "{name}还剩{total}个{fruit}。")),
    (("A repair shop in {town} had {a} old {object} waiting. On {weekday} another {b} were "
      "brought in and {c} were fixed and collected. How many {object} are still waiting?",
      "{town}的一家修理铺里原来有{a}台旧{object}等着修。{weekday}又送来{b}台，修好取走了{c}台。"
      "还有多少台{object}在等？"),
     ("{total} {object} are still waiting.", "还有{total}台{object}在等着修。")),
    (("The reading club in {town} had {a} members. In spring {b} students joined, and in "
      "summer {c} members left. How many members does the club have now?",
      "{town}的读书会原来有{a}名会员。春天新加入{b}名学生，夏天有{c}名会员退出。"
      "现在读书会有多少名会员？"),
     ("The club now has {total} members.", "读书会现在有{total}名会员。")),
    (("The bakery on {street} Street baked {a} batches of {bread} in the morning and {b} more "
      "at noon. By evening it had sold {c}. How many batches were left?",
      "{street}街的面包店早上烤了{a}个{bread}，中午又烤了{b}个，到傍晚卖出了{c}个。还剩多少个？"),
     ("{total} batches of {bread} were left.", "还剩{total}个{bread}。")),
    (("A fishing boat from {town} brought back {a} fish on {weekday} and {b} the next "
      "morning, then sold {c} at the harbour market. How many fish are left on board?",
      "{town}的一条渔船{weekday}打回{a}条鱼，第二天早上又打回{b}条，在港口集市卖掉了{c}条。"
      "船上还剩多少条鱼？"),
     ("{total} fish are left on board.", "船上还剩{total}条鱼。")),
]
REASONING: P = ("Start with {a}. Adding {b} gives {ab}. Taking away {c} leaves "
                "{ab} - {c} = {total}.",
                "先有{a}，加上{b}得{ab}，再减去{c}：{ab}-{c}={total}。")


def _arithmetic(rng: random.Random, lang: int) -> tuple[str, str, str]:
    """(question, reasoning, answer) of a two-step word problem with distinct numbers."""
    question, answer = rng.choice(WORD_PROBLEMS)
    fill = _fill(rng, *question, *answer)
    a, b = rng.randint(12, 95), rng.randint(2, 11)
    c = rng.randint(1, a - 1)
    numbers = {"a": a, "b": b, "c": c, "ab": a + b, "total": a + b - c}
    fill.values |= {k: (str(v), str(v)) for k, v in numbers.items()}
    context = _passage(rng, lang, 1)[0]  # a story sentence first, as in a textbook problem
    story = context + ("" if lang else " ") + fill.both(question)[lang]
    return story, fill.both(REASONING)[lang], fill.both(answer)[lang]


def _comprehension(rng: random.Random, lang: int) -> tuple[str, str, str, Fill, int]:
    """(prompt with passage, short answer, question) about one sentence of a passage."""
    index = rng.choice(sorted(QUESTIONS))
    passage, fill = _passage(rng, lang, rng.randint(3, 4), include=index)
    question, answer = (fill.both(p)[lang] for p in QUESTIONS[index])
    prompt = [f"Read the passage and answer the question.\n\n{passage}\n\nQuestion: {question}",
              f"阅读下面的短文并回答问题。\n\n{passage}\n\n问题：{question}"][lang]
    return prompt, answer, question, fill, index


def sft_records(n: int = 300, seed: int = 1) -> list[dict]:
    """`{"conversations": [...]}` in upstream's layout: reading comprehension, translation,
    word problems with `reasoning_content`, multi-turn dialogues, system turns and
    tool use (`tools` on the system message and `tool_calls`, both JSON strings)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        lang = i % 2
        kind = rng.choices(["read", "translate", "math", "multi", "tool"], [35, 20, 20, 15, 10])[0]
        if kind == "tool":
            records.append({"conversations": _tool_conversation(rng, lang)})
            continue
        if kind == "read":
            prompt, answer, *_ = _comprehension(rng, lang)
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        elif kind == "translate":
            picks = rng.sample(range(len(SENTENCES)), 3)
            fills = [_fill(rng, *SENTENCES[p]) for p in picks]
            rendered = [f.both(SENTENCES[p]) for f, p in zip(fills, picks, strict=True)]
            source = ("" if lang == 1 else " ").join(r[lang] for r in rendered)
            translated = ("" if lang == 0 else " ").join(r[1 - lang] for r in rendered)
            prompt = [f"Translate into Chinese:\n{source}",
                      f"请把下面这段话翻译成英文：\n{source}"][lang]
            turns = [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": translated}]
        elif kind == "math":
            q, reasoning, answer = _arithmetic(rng, lang)
            assistant = {"role": "assistant", "content": answer}
            if rng.random() < 0.7:
                assistant["reasoning_content"] = reasoning
            turns = [{"role": "user", "content": q}, assistant]
        else:  # two rounds: comprehension, then the answer in the other language
            prompt, answer, _, fill, index = _comprehension(rng, lang)
            other = fill.both(QUESTIONS[index][1])[1 - lang]
            follow = ["Please say that again in Chinese.", "请用英文再说一遍。"][lang]
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer},
                     {"role": "user", "content": follow}, {"role": "assistant", "content": other}]
        if rng.random() < 0.25:
            turns.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)[lang]})
        records.append({"conversations": turns})
    return records


def dpo_records(n: int = 200, seed: int = 2) -> list[dict]:
    """`{"chosen": [...], "rejected": [...]}`: the same user turn, a right answer and a worse one
    (a wrong number, a wrong detail, the wrong language, or an evasive reply)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        lang = i % 2
        if rng.random() < 0.4:
            q, _, good = _arithmetic(rng, lang)
            total = int(re.findall(r"\d+", good)[-1])
            bad = good.replace(str(total), str(total + rng.choice([-3, -2, -1, 1, 2, 5])))
        else:
            q, good, _, fill, index = _comprehension(rng, lang)
            style = rng.choice(["detail", "language", "evasive"])
            if style == "detail":
                wrong = _fill(rng, *QUESTIONS[index][1])
                bad = wrong.both(QUESTIONS[index][1])[lang]
                if bad == good:
                    style = "evasive"
            if style == "language":
                bad = fill.both(QUESTIONS[index][1])[1 - lang]
            if style == "evasive":
                bad = ["I am not sure, the passage does not really say.",
                       "我不太确定，短文里好像没有说。"][lang]
        user = {"role": "user", "content": q}
        records.append({"chosen": [user, {"role": "assistant", "content": good}],
                        "rejected": [user, {"role": "assistant", "content": bad}]})
    return records


def jsonl_bytes(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def text_dataset_files(pretrain: int = 300, sft: int = 300, dpo: int = 200, seed: int = 0
                       ) -> dict[str, bytes]:
    """`jingyaogong/minimind_dataset`'s three mini files, by upstream file name."""
    return {"pretrain_t2t_mini.jsonl": jsonl_bytes(pretrain_records(pretrain, seed)),
            "sft_t2t_mini.jsonl": jsonl_bytes(sft_records(sft, seed + 1)),
            "dpo.jsonl": jsonl_bytes(dpo_records(dpo, seed + 2))}


# --------------------------------------------------------------------------------------------
# Vision: scenes of coloured shapes, with captions and QA from the scene graph
# --------------------------------------------------------------------------------------------

SHAPES: list[P] = [("circle", "圆形"), ("square", "正方形"), ("triangle", "三角形"),
                   ("diamond", "菱形")]
COLOURS: dict[P, tuple[int, int, int]] = {
    ("red", "红色"): (220, 40, 40), ("green", "绿色"): (40, 170, 60),
    ("blue", "蓝色"): (40, 80, 220), ("yellow", "黄色"): (235, 200, 30),
    ("purple", "紫色"): (140, 60, 180), ("orange", "橙色"): (240, 130, 20),
}
BACKGROUNDS: dict[P, tuple[int, int, int]] = {
    ("white", "白色"): (250, 250, 250), ("light grey", "浅灰色"): (215, 215, 215),
    ("beige", "米色"): (235, 225, 200), ("pale blue", "淡蓝色"): (215, 230, 245),
}
CELLS: list[P] = [("top left", "左上角"), ("top", "上方"), ("top right", "右上角"),
                  ("left", "左侧"), ("centre", "中间"), ("right", "右侧"),
                  ("bottom left", "左下角"), ("bottom", "下方"), ("bottom right", "右下角")]
EN_COUNT = {1: "one", 2: "two", 3: "three", 4: "four"}
ZH_COUNT = {1: "一", 2: "两", 3: "三", 4: "四"}


@dataclass
class Scene:
    background: P
    objects: list[tuple[P, P, int]]  # (shape, colour, cell index)
    size: int = 64

    def caption(self, lang: int) -> str:
        bg = self.background[lang]
        if lang == 0:
            parts = [f"a {c[0]} {s[0]} {_where(CELLS[k][0])}" for s, c, k in self.objects]
            body = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
            return f"{body[0].upper()}{body[1:]}, on a {bg} background."
        parts = [f"{CELLS[k][1]}有一个{c[1]}{s[1]}" for s, c, k in self.objects]
        return f"{bg}背景上，" + "，".join(parts) + "。"

    def questions(self, lang: int) -> list[tuple[str, str]]:
        """(question, answer) pairs this scene answers exactly."""
        qa = []
        shapes = [s for s, _, _ in self.objects]
        n = len(self.objects)
        qa.append([("How many shapes are in the picture?",
                    f"There {'is' if n == 1 else 'are'} {EN_COUNT[n]} shape{'s' * (n > 1)}."),
                   ("图中一共有几个图形？", f"一共有{ZH_COUNT[n]}个图形。")][lang])
        for s, c, k in self.objects:
            if shapes.count(s) == 1:
                qa.append([(f"What colour is the {s[0]}?", f"The {s[0]} is {c[0]}."),
                           (f"{s[1]}是什么颜色的？", f"{s[1]}是{c[1]}的。")][lang])
                qa.append([(f"Where is the {s[0]}?",
                            f"The {s[0]} is at the {CELLS[k][0]} of the picture."),
                           (f"{s[1]}在图片的什么位置？", f"{s[1]}在图片的{CELLS[k][1]}。")][lang])
            qa.append([(f"Which shape is at the {CELLS[k][0]}?", f"A {c[0]} {s[0]}."),
                       (f"{CELLS[k][1]}是什么图形？", f"是一个{c[1]}{s[1]}。")][lang])
        qa.append([("What colour is the background?", f"The background is {self.background[0]}."),
                   ("背景是什么颜色？", f"背景是{self.background[1]}。")][lang])
        return qa

    def render(self, rng: random.Random) -> Any:
        from PIL import Image, ImageDraw

        base = np.array(BACKGROUNDS[self.background], dtype=np.int16)
        noise = np.random.default_rng(rng.getrandbits(32)).integers(
            -6, 7, (self.size, self.size, 3))
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        third = self.size / 3
        for shape, colour, cell in self.objects:
            cx = (cell % 3 + 0.5) * third + rng.uniform(-2, 2)
            cy = (cell // 3 + 0.5) * third + rng.uniform(-2, 2)
            r = rng.uniform(0.3, 0.42) * third
            fill = COLOURS[colour]
            if shape[0] == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape[0] == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape[0] == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        return image


def _where(cell: str) -> str:
    return f"in the {cell}" if " " in cell or cell == "centre" else f"at the {cell}"


def random_scene(rng: random.Random, size: int = 64, objects: int | None = None) -> Scene:
    count = objects or rng.choice([1, 1, 2, 2, 3, 4])
    cells = rng.sample(range(9), count)
    return Scene(rng.choice(list(BACKGROUNDS)),
                 [(rng.choice(SHAPES), rng.choice(list(COLOURS)), k) for k in cells], size)


def image_bytes(image: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


CAPTION_PROMPTS: list[P] = [
    ("Describe this image briefly.", "请简单描述这张图片。"),
    ("What do you see in the picture?", "图片里有什么？"),
    ("Give a one-sentence caption for this image.", "用一句话描述这幅图。"),
]


def _with_image(prompt: str, rng: random.Random, markers: int = 1) -> str:
    tags = "\n".join(["<image>"] * markers)
    return f"{tags}\n{prompt}" if rng.random() < 0.7 else f"{prompt}\n{tags}"


def _parquet(rows: list[dict], schema: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, row_group_size=64)
    return buffer.getvalue()


def vlm_pretrain_rows(n: int = 120, seed: int = 3, size: int = 64) -> list[dict]:
    """Caption rows (`conversations` JSON string, `image_bytes` binary)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lang, scene = i % 2, random_scene(rng, size)
        fmt = "PNG" if rng.random() < 0.5 else "JPEG"
        conversation = [
            {"role": "user", "content": _with_image(rng.choice(CAPTION_PROMPTS)[lang], rng)},
            {"role": "assistant", "content": scene.caption(lang)}]
        rows.append({"conversations": json.dumps(conversation, ensure_ascii=False),
                     "image_bytes": image_bytes(scene.render(rng), fmt)})
    return rows


def vlm_sft_rows(n: int = 160, seed: int = 4, size: int = 64, multi_image: float = 0.15
                 ) -> list[dict]:
    """QA rows; `image_bytes` is a list of images per row (length 1, or 2 for about
    `multi_image` of the rows, whose user turn then holds two `<image>` markers)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lang = i % 2
        if rng.random() < multi_image:
            first = random_scene(rng, size, rng.randint(1, 2))
            second = random_scene(rng, size, rng.randint(3, 4))
            more = ["second", "第二"]
            if rng.random() < 0.5:
                first, second, more = second, first, ["first", "第一"]
            most = max(len(first.objects), len(second.objects))
            q = ["Which of the two pictures shows more shapes?",
                 "这两张图片中，哪一张的图形更多？"][lang]
            a = [f"The {more[0]} picture: it has {EN_COUNT[most]} shapes.",
                 f"{more[1]}张图片的图形更多，有{ZH_COUNT[most]}个。"][lang]
            conversation = [{"role": "user", "content": _with_image(q, rng, 2)},
                            {"role": "assistant", "content": a}]
            images = [first.render(rng), second.render(rng)]
        else:
            scene = random_scene(rng, size)
            pairs = scene.questions(lang)
            qa = rng.sample(pairs, min(len(pairs), rng.choice([1, 1, 2])))
            conversation = []
            for k, (q, a) in enumerate(qa):
                conversation += [{"role": "user", "content": _with_image(q, rng) if k == 0 else q},
                                 {"role": "assistant", "content": a}]
            images = [scene.render(rng)]
        fmt = "PNG" if rng.random() < 0.5 else "JPEG"
        rows.append({"conversations": json.dumps(conversation, ensure_ascii=False),
                     "image_bytes": [image_bytes(im, fmt) for im in images]})
    return rows


def vision_dataset_files(pretrain: int = 120, sft: int = 160, seed: int = 3, size: int = 64
                         ) -> dict[str, bytes]:
    """`jingyaogong/minimind-v_dataset`: `pretrain_i2t.parquet` (image_bytes: binary) and
    `sft_i2t.parquet` (image_bytes: list<binary>, some rows with two images)."""
    import pyarrow as pa

    single = pa.schema([("conversations", pa.string()), ("image_bytes", pa.binary())])
    multi = pa.schema([("conversations", pa.string()), ("image_bytes", pa.list_(pa.binary()))])
    return {"pretrain_i2t.parquet": _parquet(vlm_pretrain_rows(pretrain, seed, size), single),
            "sft_i2t.parquet": _parquet(vlm_sft_rows(sft, seed + 1, size), multi)}


# --------------------------------------------------------------------------------------------
# Omni: synthetic speech-like clips, fake Mimi codes, speaker embeddings
# --------------------------------------------------------------------------------------------

def wav_bytes(samples: np.ndarray) -> bytes:
    """Mono 16 kHz PCM16 WAV of float samples in [-1, 1], as the project writes them."""
    from minimind.data.audio import encode_wav

    return encode_wav(samples)


def speech_like(text: str, seed: int = 0, min_seconds: float = 0.5, max_seconds: float = 2.0,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A clip shaped like an utterance of `text`: one voiced syllable (a harmonic series under
    two formant peaks, with a pitch glide) per ~3 letters, consonant noise bursts, word gaps;
    cut or padded to [min_seconds, max_seconds]. Deterministic in (text, seed)."""
    rng = np.random.default_rng(zlib.crc32(text.encode()) ^ (seed * 2654435761 % 2**32))
    f0 = rng.uniform(95, 240)
    pieces: list[np.ndarray] = [np.zeros(int(rng.uniform(0.03, 0.08) * sample_rate))]
    budget = int(max_seconds * sample_rate)
    for word in text.split() or [text]:
        for _ in range(max(1, len(word) // 3)):
            n = int(rng.uniform(0.09, 0.2) * sample_rate)
            t = np.arange(n) / sample_rate
            pitch = f0 * (1 + rng.uniform(-0.12, 0.12) * t / t[-1])
            phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
            f1, f2 = rng.uniform(300, 850), rng.uniform(900, 2400)
            voiced = np.zeros(n)
            for k in range(1, 16):
                fk = k * pitch.mean()
                if fk > sample_rate / 2 - 500:
                    break
                gain = (np.exp(-((fk - f1) / 180) ** 2) + 0.6 * np.exp(-((fk - f2) / 260) ** 2)
                        + 0.02)
                voiced += gain * np.sin(k * phase)
            voiced *= np.sin(np.pi * np.arange(n) / n) ** 0.7
            if rng.random() < 0.6:  # a consonant: a short burst of high-passed noise
                burst = np.diff(rng.normal(0, 1, int(0.025 * sample_rate) + 1)) * 0.3
                voiced = np.concatenate([burst, voiced])
            pieces.append(voiced / (np.abs(voiced).max() + 1e-9) * rng.uniform(0.3, 0.6))
        pieces.append(np.zeros(int(rng.uniform(0.04, 0.1) * sample_rate)))
        if sum(map(len, pieces)) >= budget:
            break
    clip = np.concatenate(pieces)[:budget]
    minimum = int(min_seconds * sample_rate)
    if len(clip) < minimum:
        clip = np.concatenate([clip, np.zeros(minimum - len(clip))])
    clip += rng.normal(0, 0.002, len(clip))  # a recording's noise floor
    return clip.astype(np.float32)


def mimi_codes(frames: int, rng: np.random.Generator) -> list[int]:
    """Flat fake Mimi codes, frame-major: codes[i * 8 + j] is codebook j of frame i."""
    return rng.integers(0, MIMI_CODEBOOK_SIZE, frames * MIMI_CODEBOOKS).tolist()


def _answer_frames(text: str) -> int:
    return max(4, math.ceil(MIMI_FRAME_RATE * 0.32 * len(text.split())))


def _spoken_pair(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.3:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        op = rng.choice(["plus", "times"])
        value = a + b if op == "plus" else a * b
        return (f"What is {EN_NUMBER[a]} {op} {EN_NUMBER[b]}?",
                f"{EN_NUMBER[a].capitalize()} {op} {EN_NUMBER[b]} is {value}.")
    index = rng.choice(sorted(QUESTIONS))
    fill = _fill(rng, *QUESTIONS[index][0], *QUESTIONS[index][1])
    return fill.both(QUESTIONS[index][0])[0], fill.both(QUESTIONS[index][1])[0]


def omni_rows(n: int, seed: int, question_audio: bool) -> list[dict]:
    """MiniMind-O rows (English): `conversations` JSON string; `question_audios` one WAV per
    user turn (no `<audio>` marker in the text) when `question_audio`, else empty (T2A);
    `answer_audios` one flat Mimi-code list per assistant turn; `ref_audios` flat codes of a
    reference voice; `spk_emb` 192 floats (unit length)."""
    rng = random.Random(seed)
    codes_rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        rounds = 1 if rng.random() < 0.7 else 2
        pairs = [_spoken_pair(rng) for _ in range(rounds)]
        conversation = []
        for q, a in pairs:
            conversation += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        speaker = rng.randrange(1000)
        spk = codes_rng.normal(0, 1, SPK_EMB_DIM)
        rows.append({
            "conversations": json.dumps(conversation, ensure_ascii=False),
            "question_audios": [wav_bytes(speech_like(q, seed=speaker * 7 + k))
                                for k, (q, _) in enumerate(pairs)] if question_audio else [],
            "answer_audios": [mimi_codes(_answer_frames(a), codes_rng) for _, a in pairs],
            "ref_audios": mimi_codes(rng.randint(25, 50), codes_rng),
            "spk_emb": (spk / np.linalg.norm(spk)).astype(np.float32).tolist(),
        })
    return rows


def omni_dataset_files(t2a: int = 120, a2a: int = 80, i2t: int = 80, seed: int = 5,
                       t2a_question_audio: bool = False, size: int = 64) -> dict[str, bytes]:
    """`jingyaogong/minimind-o_dataset`: `sft_t2a_mini.parquet` (text questions: empty
    `question_audios` unless `t2a_question_audio`), `sft_a2a_mini.parquet` (a clip per user
    turn) and `sft_i2t.parquet` (conversations + image_bytes binary)."""
    import pyarrow as pa

    schema = pa.schema([("conversations", pa.string()), ("question_audios", pa.list_(pa.binary())),
                        ("answer_audios", pa.list_(pa.list_(pa.int64()))),
                        ("ref_audios", pa.list_(pa.int64())), ("spk_emb", pa.list_(pa.float32()))])
    single = pa.schema([("conversations", pa.string()), ("image_bytes", pa.binary())])
    return {"sft_t2a_mini.parquet": _parquet(omni_rows(t2a, seed, t2a_question_audio), schema),
            "sft_a2a_mini.parquet": _parquet(omni_rows(a2a, seed + 1, True), schema),
            "sft_i2t.parquet": _parquet(
                [{**row, "image_bytes": row["image_bytes"][0]}
                 for row in vlm_sft_rows(i2t, seed + 2, size, multi_image=0.0)], single)}


# --------------------------------------------------------------------------------------------
# Weights: an upstream-style MiniMind-3 .pth
# --------------------------------------------------------------------------------------------

def upstream_state_dict(vocab_size: int = 6400, hidden_size: int = 128, num_hidden_layers: int = 4,
                        num_attention_heads: int = 4, num_key_value_heads: int = 2,
                        head_dim: int | None = 32, intermediate_size: int | None = 448,
                        use_moe: bool = False, num_experts: int = 4,
                        moe_intermediate_size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """A flat fp16 state dict with MiniMind-3's key names (defaults: our `tiny` preset), as
    upstream's trainers save it: no prefixes, no rotary buffers, `lm_head.weight` a copy of
    `model.embed_tokens.weight`. Matrices ~ N(0, 0.02); norms 1 + N(0, 0.01)."""
    import torch

    head_dim = head_dim or hidden_size // num_attention_heads
    intermediate_size = intermediate_size or 64 * math.ceil(hidden_size * math.pi / 64)
    moe_width = moe_intermediate_size or intermediate_size
    generator = torch.Generator().manual_seed(seed)

    def matrix(*shape: int) -> Any:
        return (torch.randn(*shape, generator=generator) * 0.02).half()

    def norm(width: int) -> Any:
        return (1 + torch.randn(width, generator=generator) * 0.01).half()

    q, kv = num_attention_heads * head_dim, num_key_value_heads * head_dim
    state = {"model.embed_tokens.weight": matrix(vocab_size, hidden_size)}
    for i in range(num_hidden_layers):
        p = f"model.layers.{i}."
        state.update({
            p + "self_attn.q_proj.weight": matrix(q, hidden_size),
            p + "self_attn.k_proj.weight": matrix(kv, hidden_size),
            p + "self_attn.v_proj.weight": matrix(kv, hidden_size),
            p + "self_attn.o_proj.weight": matrix(hidden_size, q),
            p + "self_attn.q_norm.weight": norm(head_dim),
            p + "self_attn.k_norm.weight": norm(head_dim),
            p + "input_layernorm.weight": norm(hidden_size),
            p + "post_attention_layernorm.weight": norm(hidden_size),
        })
        mlps = ([(p + "mlp.", intermediate_size)] if not use_moe else
                [(p + f"mlp.experts.{e}.", moe_width) for e in range(num_experts)])
        if use_moe:
            state[p + "mlp.gate.weight"] = matrix(num_experts, hidden_size)
        for prefix, width in mlps:
            state[prefix + "gate_proj.weight"] = matrix(width, hidden_size)
            state[prefix + "up_proj.weight"] = matrix(width, hidden_size)
            state[prefix + "down_proj.weight"] = matrix(hidden_size, width)
    state["model.norm.weight"] = norm(hidden_size)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return state


def pth_bytes(state: dict[str, Any]) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def upstream_pth_name(weight: str = "full_sft", hidden_size: int = 128, use_moe: bool = False
                      ) -> str:
    """Upstream's checkpoint file name: `{weight}_{hidden}{_moe}.pth` (e.g. full_sft_768.pth)."""
    return f"{weight}_{hidden_size}{'_moe' if use_moe else ''}.pth"


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------

def save_tiny_siglip(path: Path, image_size: int = 64, patch_size: int = 32, hidden_size: int = 32,
                     seed: int = 0) -> Path:
    """A random `SiglipVisionModel` (upstream's vision tower class) with its
    SiglipImageProcessor config: (image_size / patch_size)^2 tokens of width hidden_size."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.SiglipVisionConfig(image_size=image_size, patch_size=patch_size,
                                   hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                   num_hidden_layers=2, num_attention_heads=2)
    tf.SiglipVisionModel(config).save_pretrained(path)
    processor = tf.SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor.save_pretrained(path)
    return Path(path)


def save_tiny_siglip2(path: Path, patch_size: int = 16, max_num_patches: int = 16,
                      hidden_size: int = 32, seed: int = 0) -> Path:
    """A random `Siglip2VisionModel` with a NaFlex Siglip2ImageProcessor config."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.Siglip2VisionConfig(num_patches=max_num_patches, patch_size=patch_size,
                                    hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                    num_hidden_layers=2, num_attention_heads=2)
    tf.Siglip2VisionModel(config).save_pretrained(path)
    processor = tf.Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=max_num_patches)
    processor.save_pretrained(path)
    return Path(path)


def save_tiny_whisper(path: Path, d_model: int = 32, encoder_layers: int = 2,
                      chunk_length: int = 2, seed: int = 0) -> Path:
    """A random `WhisperModel` with its WhisperFeatureExtractor (80 mel bins, 16 kHz,
    `chunk_length`-second windows; max_source_positions = 50 * chunk_length)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(seed)
    config = WhisperConfig(d_model=d_model, encoder_layers=encoder_layers, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                           num_mel_bins=80, max_source_positions=50 * chunk_length,
                           max_target_positions=16, vocab_size=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80, chunk_length=chunk_length).save_pretrained(path)
    return Path(path)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative POSIX path (what a Hub repo would hold)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

# Renders what upstream's MiniMind-3 template renders (ChatML; assistant turns always carry a
# <think> block; tools in the system turn; tool results grouped into one user turn).
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n')"
    ".split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- for call in (message.tool_calls or []) %}"
    "{%- if content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- set call = call.function if call.function else call %}"
    "{{- '<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' }}"
    "{{- call.arguments if call.arguments is string else call.arguments | tojson }}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if open_thinking is defined and open_thinking is true %}{{- '<think>\\n' }}"
    "{%- else %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def training_texts(seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: the generated pretrain docs and SFT turns."""
    texts = [r["text"] for r in pretrain_records(300, seed)]
    for record in sft_records(300, seed + 1):
        texts += [m["content"] for m in record["conversations"] if m["content"]]
    return texts


def save_upstream_tokenizer(path: Path, texts: Iterable[str] | None = None, vocab_size: int = 1000
                            ) -> Path:
    """An upstream-style tokenizer folder: byte-level BPE (`tokenizer.json`, no normalizer,
    ByteLevel pre-tokenizer and decoder) with MiniMind-3's 36 added tokens at ids 0..35
    (0..20 special) and upstream's `tokenizer_config.json` fields plus CHAT_TEMPLATE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts if texts is not None else training_texts()), trainer)
    spec = json.loads(tokenizer.to_str())
    for token in spec["added_tokens"]:
        token["special"] = token["id"] < NUM_SPECIAL
    (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2),
                                         encoding="utf-8")
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": i < NUM_SPECIAL}
             for i, t in enumerate(SPECIAL_TOKENS)}
    config = {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:NUM_SPECIAL]),
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "legacy": True,
        "model_max_length": 131072, "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "image_token": "<|image_pad|>", "audio_token": "<|audio_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
        "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>",
        "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=4),
                                                encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# The fake Hub
# --------------------------------------------------------------------------------------------

LFS_SUFFIXES = (".parquet", ".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".arrow", ".wav",
                ".mp3", ".flac", ".png", ".jpg", ".jpeg", ".gguf", ".onnx", ".npy", ".gz", ".zip")
LFS_MIN_BYTES = 1_000_000  # larger files go through LFS whatever their suffix
EPOCH = "2025-01-01T00:00:00.000Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    """One repo revision to serve: `files` maps paths in the repo to their bytes."""

    repo_type: str  # "model" | "dataset" | "space"
    repo_id: str
    files: dict[str, bytes]
    revision: str = "main"


@dataclass
class _Blob:
    data: bytes
    lfs: bool

    @property
    def sha1(self) -> str:
        return git_blob_sha1(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class _Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    commits: dict[str, dict[str, _Blob]] = field(default_factory=dict)


@dataclass
class HubRequest:
    method: str
    path: str
    status: int  # 0 while being answered
    server: str  # "hub" | "cdn"


class FakeHub:
    """A loopback Hugging Face Hub; `HF_ENDPOINT=hub.url` makes huggingface_hub use it.

    Served (for model, dataset and space repos, any revision name or commit sha):
    - HEAD/GET `/{repo}/resolve/{rev}/{path}` (`/datasets/{repo}/...` for datasets): regular
      files answer 200 with `ETag` (git blob sha1), `X-Repo-Commit`, `Content-Length` and
      Range support; LFS files (LFS_SUFFIXES, or >= 1 MB) answer 302 to a second loopback
      origin (the "CDN", so huggingface_hub treats it as one) with `X-Linked-Etag` (sha256)
      and `X-Linked-Size`, like the Hub does; misses answer 404 with `X-Error-Code`
      (RepoNotFound / RevisionNotFound / EntryNotFound).
    - GET `/api/{type}s/{repo}` and `.../revision/{rev}`: repo info (id, sha, siblings);
      `.../tree/{rev}[/{path}]` (recursive or not); POST `.../paths-info/{rev}`;
      GET `.../refs`; GET `/api/agent-harnesses` (an empty registry).
    Every request is recorded in `requests`; `misses()` lists the 404s.
    """

    def __init__(self, repos: Iterable[HubRepo] = (), cdn: bool = True) -> None:
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.Lock()
        self.requests: list[HubRequest] = []
        self.use_cdn = cdn
        self._hub = self._start("hub")
        self._cdn = self._start("cdn")
        self.url = f"http://127.0.0.1:{self._hub.server_port}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_port}"
        for repo in repos:
            self.add(repo.repo_type, repo.repo_id, repo.files, repo.revision)

    # -- content ---------------------------------------------------------------------------

    def add(self, repo_type: str, repo_id: str, files: dict[str, bytes], revision: str = "main",
            lfs: Iterable[str] | None = None) -> str:
        """Serve `files` as `revision` of the repo (a branch/tag name, or a 40-hex commit);
        returns the commit sha. The first revision added also becomes `main`. `lfs` names the
        paths stored through LFS (default: by suffix and size)."""
        if repo_type not in ("model", "dataset", "space"):
            raise ValueError(f"repo_type must be model, dataset or space, not {repo_type!r}")
        forced = set(lfs) if lfs is not None else None
        blobs = {path: _Blob(data, path in forced if forced is not None else
                             path.lower().endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_BYTES)
                 for path, data in files.items()}
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            commit = revision
        else:
            digest = hashlib.sha1(f"{repo_type}/{repo_id}@{revision}".encode())
            for path in sorted(blobs):
                digest.update(f"{path}\0{blobs[path].sha1}\0".encode())
            commit = digest.hexdigest()
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            repo.commits[commit] = blobs
            if not re.fullmatch(r"[0-9a-f]{40}", revision):
                repo.refs[revision] = commit
            repo.refs.setdefault("main", commit)
        return commit

    def add_folder(self, repo_type: str, repo_id: str, folder: Path, revision: str = "main") -> str:
        return self.add(repo_type, repo_id, folder_files(folder), revision)

    def commit(self, repo_type: str, repo_id: str, revision: str = "main") -> str:
        return self._repos[(repo_type, repo_id)].refs[revision]

    # -- for tests -------------------------------------------------------------------------

    def env(self, home: Path | None = None) -> dict[str, str]:
        """Variables a subprocess needs to use this hub (and, with `home`, a private cache)."""
        env = {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        if home is not None:
            env["HF_HOME"] = str(home)
            env["HF_HUB_CACHE"] = str(Path(home) / "hub")
        return env

    def patch(self, monkeypatch: Any, home: Path) -> None:
        """Point huggingface_hub and transformers in *this* process at the hub, undone by
        pytest's `monkeypatch` (they read HF_ENDPOINT at import time, and transformers keeps
        one HfApi instance)."""
        for key, value in self.env(home).items():
            monkeypatch.setenv(key, value)
        for module, name, value in self._overrides(home):
            monkeypatch.setattr(module, name, value)

    @contextmanager
    def active(self, home: Path) -> Iterator[FakeHub]:
        """`patch` as a context manager, for use outside pytest fixtures."""
        import os

        saved_env = {key: os.environ.get(key) for key in self.env(home)}
        overrides = self._overrides(home)
        saved = [(module, name, getattr(module, name)) for module, name, _ in overrides]
        os.environ.update(self.env(home))
        for module, name, value in overrides:
            setattr(module, name, value)
        try:
            yield self
        finally:
            for module, name, value in saved:
                setattr(module, name, value)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _overrides(self, home: Path) -> list[tuple[Any, str, Any]]:
        import huggingface_hub.constants as constants

        overrides = [
            (constants, "ENDPOINT", self.url),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE",
             self.url + "/{repo_id}/resolve/{revision}/{filename}"),
            (constants, "HF_HUB_OFFLINE", False),
            (constants, "HF_HOME", str(home)),
            (constants, "HF_HUB_CACHE", str(Path(home) / "hub")),
        ]
        transformers_hub = sys.modules.get("transformers.utils.hub")  # if imported, drop its
        if transformers_hub is not None:  # HfApi (made with the old endpoint); else it is
            overrides.append((transformers_hub, "_hf_api", None))  # made while patched
        return overrides

    def hits(self, prefix: str) -> list[HubRequest]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    def misses(self) -> list[HubRequest]:
        return [r for r in self.requests if r.status == 404]

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ---------------------------------------------------------------------------

    def _start(self, role: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                hub._handle(self, role, body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                hub._handle(self, role, body=False)

            def do_POST(self) -> None:  # noqa: N802
                hub._handle(self, role, body=True)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _handle(self, h: BaseHTTPRequestHandler, role: str, body: bool) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        payload = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        record = HubRequest(h.command, h.path, 0, role)  # recorded before the client is answered
        h.hub_record = record  # type: ignore[attr-defined]  # _send fills in the status
        self.requests.append(record)
        try:
            if role == "cdn":
                self._cdn_get(h, path.lstrip("/"), body)
            elif path == "/api/agent-harnesses":
                self._json(h, {"standardEnvVars": [], "harnesses": {}}, body)
            elif path.startswith("/api/"):
                self._api(h, parts.path, query, payload, body)
            else:
                self._resolve(h, parts.path, body)
        except BrokenPipeError:
            record.status = 499

    def _find(self, repo_type: str, rest: str) -> tuple[str, _Repo, str] | None:
        """(repo_id, repo, remainder) of the longest known repo id that `rest` starts with."""
        for (kind, repo_id), repo in sorted(self._repos.items(), key=lambda kv: -len(kv[0][1])):
            if kind == repo_type and (rest == repo_id or rest.startswith(repo_id + "/")):
                return repo_id, repo, rest[len(repo_id) + 1:]
        return None

    @staticmethod
    def _commit_of(repo: _Repo, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in repo.refs:
            return repo.refs[revision]
        return revision if revision in repo.commits else None

    def _resolve(self, h: BaseHTTPRequestHandler, raw_path: str, body: bool) -> int:
        path = raw_path.lstrip("/")
        repo_type = "model"
        for prefix, kind in (("datasets/", "dataset"), ("spaces/", "space")):
            if path.startswith(prefix):
                repo_type, path = kind, path[len(prefix):]
        if "/resolve/" not in path:
            return self._error(h, 404, "RepoNotFound", "no such route")
        repo_part, rest = path.split("/resolve/", 1)
        found = self._find(repo_type, unquote(repo_part))
        if found is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        _, repo, _ = found
        revision, _, filename = rest.partition("/")
        commit = self._commit_of(repo, revision)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        blob = repo.commits[commit].get(unquote(filename))
        if blob is None:
            return self._error(h, 404, "EntryNotFound", "Entry not found", commit)
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))}
            if self.use_cdn:
                name = quote(unquote(filename).rsplit("/", 1)[-1])
                location = f"{self.cdn_url}/{blob.sha256}?filename={name}"
                return self._send(h, 302, b"", body, {**headers, "Location": location,
                                                        "ETag": f'"{blob.sha1}"'})
            headers["ETag"] = f'"{blob.sha256}"'
        else:
            headers["ETag"] = f'"{blob.sha1}"'
        return self._send_range(h, blob.data, body, headers)

    def _cdn_get(self, h: BaseHTTPRequestHandler, sha256: str, body: bool) -> int:
        for repo in list(self._repos.values()):
            for blobs in repo.commits.values():
                for blob in blobs.values():
                    if blob.lfs and blob.sha256 == sha256:
                        return self._send_range(h, blob.data, body, {"ETag": f'"{sha256}"'})
        return self._send(h, 404, b"", body, {})

    def _api(self, h: BaseHTTPRequestHandler, raw_path: str, query: dict, payload: bytes,
             body: bool) -> int:
        match = re.match(r"/api/(models|datasets|spaces)/(.+)", raw_path)
        if match is None:
            return self._error(h, 404, None, "no such route")
        repo_type = match.group(1)[:-1]
        found = self._find(repo_type, unquote(match.group(2)))
        if found is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        repo_id, repo, rest = found
        verb, _, tail = rest.partition("/")
        if verb in ("", "revision"):
            commit = self._commit_of(repo, tail or "main")
            if commit is None:
                return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
            return self._json(h, self._info(repo_type, repo_id, commit, repo), body)
        if verb == "refs":
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                        for n, c in repo.refs.items()]
            return self._json(h, {"branches": branches, "tags": [], "converts": []}, body)
        revision, _, sub = tail.partition("/")
        commit = self._commit_of(repo, revision)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        blobs = repo.commits[commit]
        if verb == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries = self._tree(blobs, unquote(sub).strip("/"), recursive)
            if entries is None:
                return self._error(h, 404, "EntryNotFound", "Entry not found", commit)
            return self._json(h, entries, body)
        if verb == "paths-info":
            if h.headers.get("Content-Type", "").startswith("application/json"):
                wanted = json.loads(payload or b"{}").get("paths", [])
            else:
                wanted = parse_qs(payload.decode()).get("paths", [])
            wanted = [wanted] if isinstance(wanted, str) else wanted
            everything = self._tree(blobs, "", True) or []
            return self._json(h, [e for e in everything if e["path"] in wanted], body)
        return self._error(h, 404, None, "no such route")

    def _info(self, repo_type: str, repo_id: str, commit: str, repo: _Repo) -> dict:
        info = {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                "author": repo_id.split("/")[0], "sha": commit, "lastModified": EPOCH,
                "createdAt": EPOCH, "private": False, "disabled": False, "gated": False,
                "downloads": 0, "likes": 0, "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(repo.commits[commit])]}
        if repo_type == "model":
            info |= {"modelId": repo_id, "library_name": "transformers"}
        return info

    @staticmethod
    def _tree(blobs: dict[str, _Blob], folder: str, recursive: bool) -> list[dict] | None:
        prefix = folder + "/" if folder else ""
        inside = {p: b for p, b in blobs.items() if p.startswith(prefix)}
        if folder and not inside:
            return None
        entries, folders = [], set()
        for path, blob in sorted(inside.items()):
            rel = path[len(prefix):]
            parents = rel.split("/")[:-1]
            for depth in range(1, len(parents) + 1):
                folders.add(prefix + "/".join(parents[:depth]))
            if not recursive and parents:
                continue
            entry = {"type": "file", "oid": blob.sha1, "size": len(blob.data), "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
            entries.append(entry)
        for name in sorted(folders):
            if recursive or "/" not in name[len(prefix):]:
                entries.append({"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(),
                                "size": 0, "path": name})
        return entries

    # -- responses -------------------------------------------------------------------------

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, body: bool,
              headers: dict[str, str]) -> int:
        record = getattr(h, "hub_record", None)
        if record is not None:
            record.status = status
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body and data:
            h.wfile.write(data)
        return status

    def _send_range(self, h: BaseHTTPRequestHandler, data: bytes, body: bool,
                    headers: dict[str, str]) -> int:
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if not ranged:
            return self._send(h, 200, data, body, headers)
        start = int(ranged.group(1))
        end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
        if start >= len(data):
            return self._send(h, 416, b"", body, {"Content-Range": f"bytes */{len(data)}"})
        end = min(end, len(data) - 1)
        return self._send(h, 206, data[start:end + 1], body,
                          {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    def _json(self, h: BaseHTTPRequestHandler, value: Any, body: bool) -> int:
        return self._send(h, 200, json.dumps(value).encode(), body,
                          {"Content-Type": "application/json"})

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None, message: str,
               commit: str | None = None) -> int:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        return self._send(h, status, json.dumps({"error": message}).encode(),
                          body=h.command != "HEAD", headers=headers)


@contextmanager
def serve_hub(repos: Iterable[HubRepo] = (), cdn: bool = True) -> Iterator[FakeHub]:
    hub = FakeHub(repos, cdn=cdn)
    try:
        yield hub
    finally:
        hub.close()


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------

# Where build_world serves its models by default: the hub ids the presets name (SigLIP2 for
# minimind-3v, Whisper for minimind-o), so a preset applies unchanged. Only ever on loopback.
VISION_ENCODER_REPO = "jingyaogong/siglip2-base-p32-256-ve"
AUDIO_ENCODER_REPO = "openai/whisper-base"
TOKENIZER_REPO = "jingyaogong/minimind-3"  # upstream's transformers-format repo holds it
WEIGHTS_REPO = "jingyaogong/minimind-3-pytorch"


@dataclass
class World:
    """What `build_world` made: local folders, and the repos to hand to FakeHub."""

    root: Path
    repos: list[HubRepo]
    vocab_size: int  # of the tokenizer, and of the .pth's embedding
    pth_name: str
    dirs: dict[str, Path]  # "tokenizer", "vision_encoder", "audio_encoder"
    vision_encoder_repo: str
    audio_encoder_repo: str
    tokenizer_repo: str
    weights_repo: str
    text_repo: str = TEXT_REPO
    vision_repo: str = VISION_REPO
    omni_repo: str = OMNI_REPO

    def files(self, repo_id: str) -> dict[str, bytes]:
        (repo,) = [r for r in self.repos if r.repo_id == repo_id]
        return repo.files

    @staticmethod
    def dataset_uri(repo_id: str, filename: str) -> str:
        """A `data.sources[].uri` (hf:// without a prefix is a dataset repo there)."""
        return f"hf://{repo_id}/{filename}"

    def weights_uri(self) -> str:
        """An `init_from` URI of the .pth (hf:// without a prefix is a model repo there)."""
        return f"hf://{self.weights_repo}/{self.pth_name}"


def build_world(root: Path, vocab_size: int = 1000, pth_weight: str = "full_sft",
                hidden_size: int = 128, seed: int = 0, *,
                vision_encoder_repo: str = VISION_ENCODER_REPO,
                audio_encoder_repo: str = AUDIO_ENCODER_REPO,
                tokenizer_repo: str = TOKENIZER_REPO, weights_repo: str = WEIGHTS_REPO) -> World:
    """Build every piece under `root` (encoders, tokenizer) and return them as Hub repos:
    the three upstream dataset repos, the two encoders, the tokenizer and a weights repo
    holding `{pth_weight}_{hidden}.pth` (tiny-preset shapes) whose vocab matches the tokenizer."""
    root = Path(root)
    tokenizer_dir = save_upstream_tokenizer(root / "tokenizer", training_texts(seed), vocab_size)
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = len(spec["model"]["vocab"])
    vision_dir = save_tiny_siglip(root / "vision_encoder", seed=seed)
    audio_dir = save_tiny_whisper(root / "audio_encoder", seed=seed)
    pth_name = upstream_pth_name(pth_weight, hidden_size)
    repos = [
        HubRepo("dataset", TEXT_REPO, text_dataset_files(seed=seed)),
        HubRepo("dataset", VISION_REPO, vision_dataset_files(seed=seed + 3)),
        HubRepo("dataset", OMNI_REPO, omni_dataset_files(seed=seed + 5)),
        HubRepo("model", vision_encoder_repo, folder_files(vision_dir)),
        HubRepo("model", audio_encoder_repo, folder_files(audio_dir)),
        HubRepo("model", tokenizer_repo, folder_files(tokenizer_dir)),
        HubRepo("model", weights_repo, {pth_name: pth_bytes(upstream_state_dict(
            vocab_size=vocab, hidden_size=hidden_size, seed=seed))}),
    ]
    dirs = {"tokenizer": tokenizer_dir, "vision_encoder": vision_dir, "audio_encoder": audio_dir}
    return World(root, repos, vocab, pth_name, dirs, vision_encoder_repo, audio_encoder_repo,
                 tokenizer_repo, weights_repo)
