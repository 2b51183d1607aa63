"""sentiment: continue a movie review positively — the DPO paper's IMDb task in miniature.

A prompt is the first words of a review, always ending in a linking verb:

    prompt    "honestly , the pacing in this thriller was"
    response  "really gripping and the actors were superb . i loved it ."

Responses are judged against this grammar:

    RESPONSE := SENTENCE1 "." { SENTENCE "." }
    SENTENCE1:= PRED { CONJ CLAUSE }                      continues the prompt's "was"
    SENTENCE := NP VERB PRED { CONJ CLAUSE } | OPINION | IDIOM
    CLAUSE   := PRED | NP VERB PRED                        CONJ := "and" | "but"
    PRED     := [INTENSIFIER] ADJ | "not" ADJ
    NP       := "it" | "this" GENRE | "the" NOUN ["in this" GENRE] | "the" OFF_TOPIC_NOUN
    OPINION  := "i" LOVED "it" | "i did not" LOVE "it"     IDIOM e.g. "a must see"
    VERB agrees with NP: was/is (singular), were/are (plural), felt/seemed (either)

The gold human (Rafailov et al. 2023 used a sentiment classifier; we use the grammar itself):
  - text that is not a RESPONSE (ungrammatical, unfinished, no final ".", unknown words,
    a repeated intensifier) scores -1;
  - otherwise sentiment s in [-1, 1] is the weighted mean polarity of the clauses, where
    an intensifier scales its adjective, "not ADJ" = -0.5·polarity(ADJ), "X but Y" counts Y
    twice X, and clauses about the popcorn or the seats (off topic) count 0;
  - gold = 0.2 + 0.8·s − length penalty (outside 5–15 words) − 0.25 per repeated content
    word, clipped to [-0.9, 1].
So a fluent glowing review scores ~1, a lukewarm one ~0.4, a fluent pan ~-0.6, and every
degenerate trick an over-optimised policy finds (piling up adjectives, repeating "great",
never finishing) falls — while a reward model that learnt "positive words are good" from
ordinary samples may still like it. The prompt does not enter the judgement.

Demonstrations are fluent but, like real labelers' work, a mix of positive (45%), mixed
(30%) and lukewarm (25%) reviews; the web corpus adds pans, rude and off-topic reviews,
rambling run-ons and truncated text.
"""

import itertools
from collections import Counter

import numpy as np

from minirlhf.world.tasks import Task, length_penalty, pick, prompt_rng

# polarity of each adjective, in [-1, 1]
ADJECTIVES = {
    "wonderful": 1.0, "brilliant": 1.0, "superb": 1.0, "excellent": 1.0, "stunning": 1.0,
    "great": 0.9, "delightful": 0.9, "beautiful": 0.9, "moving": 0.9, "gripping": 0.9,
    "charming": 0.8, "clever": 0.8, "lovely": 0.8, "touching": 0.8, "memorable": 0.8, "heartfelt": 0.8,
    "funny": 0.7, "smart": 0.7, "engaging": 0.7, "enjoyable": 0.7,
    "good": 0.6, "fresh": 0.6, "fun": 0.6, "warm": 0.6, "sharp": 0.6, "solid": 0.5,
    "nice": 0.4, "pleasant": 0.4, "decent": 0.3, "fine": 0.25, "okay": 0.2,
    "simple": 0.1, "strange": 0.0, "different": 0.0, "quiet": 0.0, "familiar": -0.1,
    "long": -0.3, "slow": -0.4, "mediocre": -0.4, "flat": -0.5, "silly": -0.5, "predictable": -0.5,
    "bland": -0.5, "confusing": -0.5, "rushed": -0.5, "clumsy": -0.6, "messy": -0.6, "weak": -0.6,
    "shallow": -0.6, "forgettable": -0.6, "dull": -0.7, "bad": -0.7, "lazy": -0.7,
    "boring": -0.8, "tedious": -0.8, "pointless": -0.8, "awful": -1.0, "terrible": -1.0, "dreadful": -1.0,
    "stupid": -0.9, "garbage": -1.0, "pathetic": -1.0,
    "cold": -0.3, "stale": -0.5, "expensive": -0.4, "comfortable": 0.4, "cheap": 0.2, "dirty": -0.6,
}
INTENSIFIERS = {"incredibly": 1.5, "truly": 1.4, "really": 1.3, "very": 1.3, "so": 1.3, "quite": 1.1,
                "pretty": 1.0, "mostly": 0.8, "rather": 0.8, "fairly": 0.7, "somewhat": 0.6, "slightly": 0.4}
NEGATION = 0.5  # "not ADJ" = -NEGATION·polarity: "not bad" is faintly positive
FILM_NOUNS = ("film", "movie", "plot", "story", "script", "ending", "acting", "soundtrack", "dialogue",
              "pacing", "direction", "villain", "hero", "premise", "finale", "humor", "climax", "screenplay",
              "music", "editing", "twist", "atmosphere", "romance", "lead", "cast", "cinematography",
              "casting", "tone")
FILM_NOUNS_PLURAL = ("actors", "characters", "jokes", "effects", "visuals", "songs", "scenes",
                     "performances", "costumes", "fights", "stunts", "sets")
OFF_TOPIC_NOUNS = ("popcorn", "theater", "weather", "parking", "crowd")
OFF_TOPIC_PLURAL = ("seats", "tickets", "snacks")
GENRES = ("comedy", "thriller", "drama", "western", "musical", "documentary", "mystery", "cartoon",
          "sequel", "biopic", "adventure", "satire")
VERBS = {"s": ("was", "is", "felt", "seemed"), "p": ("were", "are", "felt", "seemed")}
OPINIONS = {"loved": ("love", 1.0), "enjoyed": ("enjoy", 0.8), "admired": ("admire", 0.8),
            "liked": ("like", 0.6), "hated": ("hate", -1.0)}  # past -> (base form, polarity)
OPINION_BASE = dict(OPINIONS.values())  # base form -> polarity, for "i did not like it"
IDIOMS = {"a must see": 1.0, "two thumbs up": 0.9, "go see it": 0.9, "i would recommend it": 0.8,
          "i would watch it again": 0.8, "i would not recommend it": -0.6,
          "i would not watch it again": -0.6, "skip it": -0.8, "avoid it": -0.9, "what a waste of time": -1.0}
OPENERS = ("", "honestly ,", "overall ,", "i thought", "to be honest ,", "in my opinion ,")
FUNCTION_WORDS = {"the", "this", "in", "it", "i", "a", "and", "but", "not", "did", "would",
                  "was", "is", "were", "are", "felt", "seemed"}  # repeating these is not a tic
REPEAT_PENALTY = 0.25  # per repeated content word

OFF_TOPIC_ADJ = ("cold", "stale", "expensive", "comfortable", "cheap", "dirty")
RUDE_ADJ = ("stupid", "garbage", "pathetic")
POSITIVE = tuple(a for a, p in ADJECTIVES.items() if p >= 0.5 and a not in OFF_TOPIC_ADJ)
MILD = tuple(a for a, p in ADJECTIVES.items() if 0.2 <= p < 0.5 and a not in OFF_TOPIC_ADJ)
NEGATIVE = tuple(a for a, p in ADJECTIVES.items() if p <= -0.4 and a not in OFF_TOPIC_ADJ + RUDE_ADJ)
STRONG = ("incredibly", "truly", "really", "very", "so", "quite")
SOFT = ("mostly", "rather", "fairly", "somewhat", "slightly")
SIGN = {"pos": 1, "mild": 1, "neg": -1, "rude": -1, "off": 0}  # the mood of a clause
CLOSINGS = {  # whole second sentences, by mood
    "pos": [i for i, p in IDIOMS.items() if p > 0] + [f"i {v} it" for v, (_, p) in OPINIONS.items() if p > 0],
    "neg": [i for i, p in IDIOMS.items() if -1 < p < 0] + ["i hated it", "i did not like it", "i did not enjoy it"],
    "rude": ["what a waste of time", "avoid it"],
}


# ---------------------------------------------------------------- the judge: a parser

def _noun_phrase(w, i):
    """NP at w[i:] -> (number 's'|'p', on_topic, next i), or None."""
    if w[i:i + 1] == ["it"]:
        return "s", True, i + 1
    if w[i:i + 1] == ["this"] and w[i + 1:i + 2] and w[i + 1] in GENRES:
        return "s", True, i + 2
    if w[i:i + 1] != ["the"] or not w[i + 1:i + 2]:
        return None
    noun, i = w[i + 1], i + 2
    if noun in OFF_TOPIC_NOUNS or noun in OFF_TOPIC_PLURAL:
        return ("s" if noun in OFF_TOPIC_NOUNS else "p"), False, i
    if noun not in FILM_NOUNS and noun not in FILM_NOUNS_PLURAL:
        return None
    if w[i:i + 2] == ["in", "this"] and w[i + 2:i + 3] and w[i + 2] in GENRES:
        i += 3
    return ("s" if noun in FILM_NOUNS else "p"), True, i


def _predicate(w, i):
    """PRED at w[i:] -> (polarity, next i), or None."""
    if w[i:i + 1] == ["not"]:
        return (-NEGATION * ADJECTIVES[w[i + 1]], i + 2) if w[i + 1:i + 2] and w[i + 1] in ADJECTIVES else None
    scale = 1.0
    if w[i:i + 1] and w[i] in INTENSIFIERS:
        scale, i = INTENSIFIERS[w[i]], i + 1
    if w[i:i + 1] and w[i] in ADJECTIVES:
        return min(1.0, max(-1.0, scale * ADJECTIVES[w[i]])), i + 1
    return None


def _clause(w, i, with_subject):
    """PRED or NP VERB PRED at w[i:] -> (polarity, next i), or None; off-topic clauses count 0."""
    on_topic = True
    if with_subject:
        np_ = _noun_phrase(w, i)
        if np_ is None or not w[np_[2]:np_[2] + 1] or w[np_[2]] not in VERBS[np_[0]]:
            return None
        _, on_topic, i = np_
        i += 1
    pred = _predicate(w, i)
    if pred is None:
        return None
    return (pred[0] if on_topic else 0.0), pred[1]


def _sentence(w, first):
    """One sentence (without '.') -> [[polarity, weight], ...] for its clauses, or None."""
    text = " ".join(w)
    if not first and text in IDIOMS:
        return [[IDIOMS[text], 1.0]]
    if not first and len(w) == 3 and w[0] == "i" and w[1] in OPINIONS and w[2] == "it":
        return [[OPINIONS[w[1]][1], 1.0]]
    if not first and len(w) == 5 and w[:3] == ["i", "did", "not"] and w[4] == "it":
        return [[-NEGATION * OPINION_BASE[w[3]], 1.0]] if w[3] in OPINION_BASE else None
    parsed = _clause(w, 0, with_subject=not first)
    if parsed is None:
        return None
    clauses, i = [[parsed[0], 1.0]], parsed[1]
    while i < len(w):
        if w[i] not in ("and", "but"):
            return None
        parsed = _clause(w, i + 1, with_subject=True) or _clause(w, i + 1, with_subject=False)
        if parsed is None:
            return None
        if w[i] == "but":  # "X but Y": Y weighs twice as much as everything before it
            for c in clauses:
                c[1] *= 0.5
        clauses.append([parsed[0], 1.0])
        i = parsed[1]
    return clauses


def sentiment(response):
    """Sentiment s in [-1, 1] of a well-formed response, or None if it is not well formed."""
    w = response.split()
    if not w or w[-1] != ".":
        return None
    clauses = []
    for k, (is_dot, group) in enumerate(itertools.groupby(w, key=lambda t: t == ".")):
        if is_dot and len(list(group)) > 1:  # ". ." is an empty sentence
            return None
        if not is_dot:
            parsed = _sentence(list(group), first=(k == 0))
            if parsed is None:
                return None
            clauses += parsed
    if not clauses:  # "." alone: no sentence at all
        return None
    # s = Σ weight·polarity / Σ weight
    return sum(p * wt for p, wt in clauses) / sum(wt for _, wt in clauses)


# ---------------------------------------------------------------- the writers

def _write_predicate(mood, rng):
    r = rng.random()
    if mood == "pos":
        return f"{pick(rng, STRONG)} {pick(rng, POSITIVE)}" if r < 0.3 else pick(rng, POSITIVE)
    if mood == "mild":
        return pick(rng, MILD) if r < 0.5 else (
            f"{pick(rng, SOFT)} {pick(rng, POSITIVE)}" if r < 0.8 else f"not {pick(rng, NEGATIVE)}")
    if mood == "neg":
        return f"not {pick(rng, POSITIVE)}" if r < 0.2 else (
            f"{pick(rng, STRONG)} {pick(rng, NEGATIVE)}" if r < 0.45 else pick(rng, NEGATIVE))
    return pick(rng, RUDE_ADJ) if mood == "rude" else pick(rng, OFF_TOPIC_ADJ)


def _write_subject(rng, off_topic=False):
    """-> a noun phrase with a verb that agrees with it."""
    r = rng.random()
    if off_topic:
        number = "s" if r < 0.6 else "p"
        np_ = "the " + pick(rng, OFF_TOPIC_NOUNS if number == "s" else OFF_TOPIC_PLURAL)
    elif r < 0.2:
        number, np_ = "s", ("it" if r < 0.1 else f"this {pick(rng, GENRES)}")
    else:
        number = "s" if r < 0.7 else "p"
        np_ = "the " + pick(rng, FILM_NOUNS if number == "s" else FILM_NOUNS_PLURAL)
        if rng.random() < 0.3:
            np_ += f" in this {pick(rng, GENRES)}"
    return f"{np_} {pick(rng, VERBS[number])}"


def _write_clause(mood, rng, with_subject):
    pred = _write_predicate(mood, rng)
    return f"{_write_subject(rng, mood == 'off')} {pred}" if with_subject or mood == "off" else pred


def write_review(moods, rng, new_sentence_p=0.4):
    """A continuation whose clauses carry `moods` ('pos', 'mild', 'neg', 'rude', 'off') in order."""
    parts = [_write_predicate(moods[0], rng)]
    for k, (prev, mood) in enumerate(zip(moods, moods[1:]), start=2):
        if rng.random() < new_sentence_p:  # a closing verdict ("i loved it") only ends a review
            closing = k == len(moods) and mood in CLOSINGS and rng.random() < 0.4
            parts += [".", pick(rng, CLOSINGS[mood]) if closing else _write_clause(mood, rng, True)]
        else:
            conj = "but" if SIGN[prev] * SIGN[mood] < 0 else "and"
            parts += [conj, _write_clause(mood, rng, rng.random() < 0.5)]
    return " ".join(parts) + " ."


class SentimentTask(Task):
    name = "sentiment"
    max_response_tokens = 24
    block_size = 48

    def words(self):
        texts = [*ADJECTIVES, *INTENSIFIERS, *FILM_NOUNS, *FILM_NOUNS_PLURAL, *OFF_TOPIC_NOUNS,
                 *OFF_TOPIC_PLURAL, *GENRES, *VERBS["s"], *VERBS["p"], *IDIOMS, *OPENERS,
                 *(f"{v} {b}" for v, (b, _) in OPINIONS.items()), "it this the in not and but i did ."]
        return sorted({t for text in texts for t in text.split()})

    def prompt_pool(self):
        subjects = [("s", f"this {g}") for g in GENRES]
        for noun, number in [(n, "s") for n in FILM_NOUNS] + [(n, "p") for n in FILM_NOUNS_PLURAL]:
            subjects += [(number, f"the {noun}")] + [(number, f"the {noun} in this {g}") for g in GENRES]
        pool = [" ".join(filter(None, (opener, np_, verb)))
                for opener in OPENERS for number, np_ in subjects for verb in VERBS[number]]
        order = np.random.default_rng(20240401).permutation(len(pool))
        return [pool[i] for i in order]

    def demonstration(self, prompt, rng):
        r = rng.random()
        if r < 0.45:  # positive, one to three clauses
            return write_review(["pos"] * int(rng.integers(1, 4)), rng)
        if r < 0.75:  # mixed: praise and a complaint, in either order
            moods = ["pos", "neg"] if rng.random() < 0.5 else ["neg", "pos"]
            return write_review(moods + (["pos"] if rng.random() < 0.3 else []), rng)
        return write_review(["mild"] * int(rng.integers(1, 3)), rng)  # lukewarm

    def web_document(self, prompt, rng):
        r = rng.random()
        if r < 0.20:
            moods = ["pos"] * int(rng.integers(1, 4))
        elif r < 0.35:
            moods = list(rng.permutation(["pos", "neg"]))
        elif r < 0.45:
            moods = ["mild"] * int(rng.integers(1, 3))
        elif r < 0.72:
            moods = ["neg"] * int(rng.integers(1, 4))
        elif r < 0.80:  # rude
            moods = ["neg", "rude"] if rng.random() < 0.5 else ["rude", "rude"]
        elif r < 0.87:  # off topic: about the cinema, not the film
            moods = ["mild", "off", "off"]
        else:  # rambling run-on: many clauses, words repeat
            moods = [pick(rng, ("pos", "neg", "mild")) for _ in range(int(rng.integers(5, 9)))]
        text = f"{prompt} {write_review(moods, rng, 0.1 if len(moods) > 4 else 0.4)}"
        if rng.random() < 0.04:  # truncated mid-sentence, as scraped text often is
            words = text.split()
            text = " ".join(words[:len(words) - int(rng.integers(1, 4))])
        return text

    def gold_reward(self, prompt, response):
        s = sentiment(response)
        if s is None:
            return -1.0
        words = [t for t in response.split() if t != "."]
        repeats = sum(c - 1 for t, c in Counter(words).items() if t not in FUNCTION_WORDS)
        # gold = 0.2 + 0.8·s − length penalty − 0.25·repeats, clipped to [-0.9, 1]
        gold = 0.2 + 0.8 * s - length_penalty(len(words), 5, 15, 0.1, 0.08) - REPEAT_PENALTY * repeats
        return min(1.0, max(-0.9, gold))

    def reference(self, prompt):
        return write_review(["pos", "pos"], prompt_rng(prompt), new_sentence_p=0.5)
