"""summarize: TL;DR of a short advice post — "Learning to summarize from human feedback" in miniature.

A prompt is a post of facts ending in a TL;DR marker; the summary copies the important ones:

    prompt    "my flatmate broke my laptop . we met in college . then they refused to pay .
               should i move out ? tl;dr :"
    response  "roommate broke my computer and refused to pay . should i move out ?"

Posts and summaries share one grammar of clauses joined by "," "and" "." "?":

    PROBLEM   ["my"] SUBJECT ACTION ["my"] OBJECT        "my flatmate broke my laptop"
    REACTION  ["then"] ["they" | ["my"] SUBJECT] REACTION "then they refused to pay"
    QUESTION  "should i" WHAT   (followed by "?")        "should i move out ?"
    FILLER    an unimportant detail                      "we met in college"

Each concept has synonyms (flatmate = roommate, computer = laptop, apologized = said sorry),
so many different summaries are equally good — which is why ROUGE against one reference
disagrees with the gold judge (Stiennon et al. 2020, Sec. 4.3), measurably (see the tests).

The gold human parses the post into its facts and the summary into claims:
  - a summary that is not a sequence of clauses of the grammar, or does not end with "." or
    "?", scores -1 (word salad, unfinished text, continuing the post, "tl;dr" again);
  - coverage = 0.5·[problem stated] + 0.25·[reaction] + 0.25·[question];
  - gold = coverage − 0.5 per invented fact (a claim the post does not make: wrong subject,
    object, reaction, …) − 0.3 per fact repeated − 0.1 per filler copied − 0.08 per word
    beyond 14, clipped to [-0.9, 1].
A post copied whole covers every fact but is long and full of filler; a 2-layer model can
reach the optimum by copying three clauses from the prompt.

Demonstrations are decent but imperfect: 30% complete, the rest miss a fact, copy a
filler, or (5%) get a detail wrong. The web corpus adds copied posts, off-topic and rude
replies, and posts without a TL;DR.
"""

import functools
import itertools

import numpy as np

from minirlhf.world.tasks import Task, length_penalty, pick, prompt_rng

# concept -> the surface forms that express it (the first is the canonical one)
SUBJECTS = {"roommate": ("roommate", "flatmate"), "sister": ("sister",), "brother": ("brother",),
            "boss": ("boss", "manager"), "neighbor": ("neighbor",), "girlfriend": ("girlfriend",),
            "boyfriend": ("boyfriend",), "coworker": ("coworker", "colleague"), "landlord": ("landlord",),
            "friend": ("friend", "buddy"), "cousin": ("cousin",), "dad": ("dad", "father"),
            "mom": ("mom", "mother")}
ACTIONS = {"broke": ("broke", "damaged", "wrecked"), "lost": ("lost", "misplaced"), "borrowed": ("borrowed",),
           "sold": ("sold",), "stole": ("stole", "took"), "scratched": ("scratched",), "hid": ("hid",)}
OBJECTS = {"car": ("car",), "laptop": ("laptop", "computer"), "phone": ("phone",), "bike": ("bike", "bicycle"),
           "guitar": ("guitar",), "camera": ("camera",), "keys": ("keys",), "watch": ("watch",),
           "jacket": ("jacket", "coat"), "books": ("books",)}
REACTIONS = {"refused to pay": ("refused to pay", "will not pay"), "said sorry": ("said sorry", "apologized"),
             "denied it": ("denied it", "denies it"), "laughed about it": ("laughed about it", "laughed it off"),
             "blamed me": ("blamed me",), "offered to pay": ("offered to pay", "promised to pay"),
             "ignored me": ("ignored me",), "got angry": ("got angry", "got mad")}
QUESTIONS = {"move out": ("move out", "leave"), "call the police": ("call the police", "call the cops"),
             "talk to them": ("talk to them", "confront them"), "ask for money": ("ask for money",),
             "let it go": ("let it go", "forget it"), "end the friendship": ("end the friendship",),
             "tell my parents": ("tell my parents",), "buy a new one": ("buy a new one",)}
FILLERS = ("we met in college", "we have been friends for years", "i am twenty years old",
           "it was a rainy day", "i work night shifts", "i had pasta for dinner", "we live in a small town",
           "i love my cat", "this is my first post", "sorry for my english", "i am on mobile",
           "it was my birthday")
JUNK = ("nobody cares .", "you are an idiot .", "this is fake .", "grow up .", "just move on .",
        "lol what a mess .")  # rude or lazy web replies, outside the grammar
SEPARATORS = (",", "and", ".", "?")
TLDR = "tl;dr :"
WEIGHTS = {"problem": 0.5, "reaction": 0.25, "question": 0.25}  # importance of each fact
MAX_WORDS = 14  # longer summaries lose LENGTH_PENALTY per extra word
LENGTH_PENALTY = 0.08


def _surface_map(concepts):
    """{tuple of words: concept} for every surface form."""
    return {tuple(s.split()): c for c, forms in concepts.items() for s in forms}


SUBJECT_OF, ACTION_OF, OBJECT_OF = _surface_map(SUBJECTS), _surface_map(ACTIONS), _surface_map(OBJECTS)
REACTION_OF, QUESTION_OF = _surface_map(REACTIONS), _surface_map(QUESTIONS)
FILLER_OF = {tuple(f.split()): f for f in FILLERS}


# ---------------------------------------------------------------- the judge: a parser

def _optional(w, word):
    """w without its leading `word`, if it has one."""
    return w[1:] if w[:1] == (word,) else w


def _claim(w):
    """One clause (tuple of words) -> (kind, fact), or None if it is not a clause."""
    if w in FILLER_OF:
        return "filler", FILLER_OF[w]
    if w[:2] == ("should", "i"):
        return ("question", QUESTION_OF[w[2:]]) if w[2:] in QUESTION_OF else None
    core = _optional(w, "my")  # PROBLEM: ["my"] SUBJECT ACTION ["my"] OBJECT
    if core[:1] in SUBJECT_OF and core[1:2] in ACTION_OF and _optional(core[2:], "my") in OBJECT_OF:
        return "problem", (SUBJECT_OF[core[:1]], ACTION_OF[core[1:2]], OBJECT_OF[_optional(core[2:], "my")])
    rest, subject = _optional(w, "then"), None  # REACTION: ["then"] ["they" | ["my"] SUBJECT] REACTION
    if rest[:1] == ("they",):
        rest = rest[1:]
    elif _optional(rest, "my")[:1] in SUBJECT_OF:
        named = _optional(rest, "my")
        subject, rest = SUBJECT_OF[named[:1]], named[1:]
    return ("reaction", (subject, REACTION_OF[rest])) if rest in REACTION_OF else None


def claims(text):
    """A summary (or a post without its TL;DR) -> list of (kind, fact), or None if malformed."""
    w = text.split()
    if not w or w[-1] not in (".", "?"):
        return None
    out = []
    groups = [(is_sep, tuple(g)) for is_sep, g in itertools.groupby(w, key=lambda t: t in SEPARATORS)]
    if groups[0][0]:
        return None
    for (_, clause), (_, seps) in zip(groups[0::2], groups[1::2]):
        claim = _claim(clause)
        # exactly one separator after a clause; "?" after a question and only there
        if claim is None or len(seps) != 1 or (seps[0] == "?") != (claim[0] == "question"):
            return None
        out.append(claim)
    return out


@functools.lru_cache(maxsize=1 << 16)
def post_facts(prompt):
    """The facts of a post: {'problem': (s, a, o), 'reaction': r, 'question': q, 'fillers': {...}}."""
    if not prompt.endswith(" " + TLDR):
        raise ValueError(f"summarize: a prompt ends with {TLDR!r}, got {prompt[-20:]!r}")
    facts = {"fillers": set()}
    for kind, fact in claims(prompt[:-len(TLDR)]) or ():
        if kind == "filler":
            facts["fillers"].add(fact)
        else:
            facts[kind] = fact[1] if kind == "reaction" else fact
            if kind == "problem":
                facts["subject"] = fact[0]
    if not {"problem", "reaction", "question"} <= set(facts):
        raise ValueError(f"summarize: not a post of this task (it needs a problem, a reaction and a "
                         f"question in the task's grammar): {prompt!r}")
    return facts


# ---------------------------------------------------------------- the writers

def _say(concepts, concept, rng, synonym_p):
    """Surface form of a concept: a random synonym with probability synonym_p, else canonical."""
    forms = concepts[concept]
    return pick(rng, forms) if rng.random() < synonym_p else forms[0]


def write_post(rng):
    subject, action, obj = pick(rng, list(SUBJECTS)), pick(rng, list(ACTIONS)), pick(rng, list(OBJECTS))
    reaction, question = pick(rng, list(REACTIONS)), pick(rng, list(QUESTIONS))
    sentences = [f"my {_say(SUBJECTS, subject, rng, 0.5)} {_say(ACTIONS, action, rng, 0.5)} "
                 f"my {_say(OBJECTS, obj, rng, 0.5)} .",
                 f"{pick(rng, ('then they', 'they', 'my ' + _say(SUBJECTS, subject, rng, 0.5)))} "
                 f"{_say(REACTIONS, reaction, rng, 0.5)} ."]
    for filler in rng.permutation(FILLERS)[:int(rng.integers(1, 3))]:
        sentences.insert(int(rng.integers(len(sentences) + 1)), f"{filler} .")
    return " ".join(sentences + [f"should i {_say(QUESTIONS, question, rng, 0.5)} ?", TLDR])


def write_summary(facts, parts, rng, synonym_p=0.5, terse_p=0.5):
    """A summary stating `parts` (some of 'problem', 'reaction', 'question', 'filler') in order."""
    my = "" if rng.random() < terse_p else "my "
    clauses = []
    for part in parts:
        if part == "problem":
            s, a, o = facts["problem"]
            clauses.append(f"{my}{_say(SUBJECTS, s, rng, synonym_p)} {_say(ACTIONS, a, rng, synonym_p)} "
                           f"{my}{_say(OBJECTS, o, rng, synonym_p)}")
        elif part == "reaction":
            who = pick(rng, ("", "they ", "then they ", f"{my}{_say(SUBJECTS, facts['subject'], rng, synonym_p)} "))
            clauses.append(who + _say(REACTIONS, facts["reaction"], rng, synonym_p))
        elif part == "question":
            clauses.append(f"should i {_say(QUESTIONS, facts['question'], rng, synonym_p)}")
        else:
            clauses.append(pick(rng, sorted(facts["fillers"])))
    text = clauses[0]
    for prev, clause in zip(clauses, clauses[1:]):
        sep = "?" if prev.startswith("should i") else pick(rng, (",", "and", "."))
        text += f" {sep} {clause}"
    return text + (" ?" if clauses[-1].startswith("should i") else " .")


def _wrong(facts, rng):
    """The same facts with one detail replaced (what a careless summary invents)."""
    s, a, o = facts["problem"]
    wrong = dict(facts)
    if rng.random() < 0.5:
        wrong["problem"] = (s, a, pick(rng, [x for x in OBJECTS if x != o]))
    else:
        wrong["reaction"] = pick(rng, [x for x in REACTIONS if x != facts["reaction"]])
    return wrong


class SummarizeTask(Task):
    name = "summarize"
    max_response_tokens = 30
    block_size = 72
    n_documents = 2500

    def words(self):
        texts = [*(f for c in (SUBJECTS, ACTIONS, OBJECTS, REACTIONS, QUESTIONS) for v in c.values() for f in v),
                 *FILLERS, *JUNK, *SEPARATORS, TLDR, "my then they should i"]
        return sorted({t for text in texts for t in text.split()})

    def prompt_pool(self):
        rng, pool = np.random.default_rng(20240402), {}
        while len(pool) < 7000:
            pool.setdefault(write_post(rng), None)  # a dict keeps first-seen order, drops repeats
        return list(pool)

    def demonstration(self, prompt, rng):
        facts, r = post_facts(prompt), rng.random()
        order = ["problem", "reaction", "question"] if rng.random() < 0.7 else ["question", "problem", "reaction"]
        if r < 0.30:
            parts = order
        elif r < 0.50:
            parts = [p for p in order if p != "question"]
        elif r < 0.70:
            parts = [p for p in order if p != "reaction"]
        elif r < 0.85:
            parts = order[:2] + ["filler"] + order[2:]
        elif r < 0.95:
            parts = ["problem"]
        else:
            facts, parts = _wrong(facts, rng), order
        return write_summary(facts, parts, rng)

    def web_document(self, prompt, rng):
        facts, r = post_facts(prompt), rng.random()
        if r < 0.10:  # a post nobody summarised
            return prompt[:-len(TLDR) - 1]
        if r < 0.35:
            summary = write_summary(facts, ["problem", "reaction", "question"], rng)
        elif r < 0.55:  # the whole post again
            summary = prompt[:-len(TLDR) - 1]
        elif r < 0.65:  # off topic
            summary = write_summary(facts, ["filler"], rng)
        elif r < 0.75:
            summary = pick(rng, JUNK)
        elif r < 0.90:
            summary = write_summary(_wrong(facts, rng), ["problem", "reaction"], rng)
        else:
            summary = write_summary(facts, [pick(rng, ("problem", "reaction", "question"))], rng)
        return f"{prompt} {summary}"

    def gold_reward(self, prompt, response):
        facts, said = post_facts(prompt), claims(response)
        if not said:
            return -1.0
        seen, invented, repeats, fillers = set(), 0, 0, 0
        for kind, fact in said:
            if kind == "reaction":
                subject, fact = fact
                true = fact == facts["reaction"] and subject in (None, facts["subject"])
            elif kind == "filler":
                true = fact in facts["fillers"]
            else:
                true = fact == facts[kind]
            if not true:
                invented += 1
            elif (kind, fact) in seen:
                repeats += 1
            else:
                seen.add((kind, fact))
                fillers += kind == "filler"
        coverage = sum(WEIGHTS.get(kind, 0.0) for kind, _ in seen)
        n_words = sum(t not in SEPARATORS for t in response.split())
        # gold = coverage − 0.5·invented − 0.3·repeats − 0.1·fillers − 0.08·(words beyond 14)
        gold = (coverage - 0.5 * invented - 0.3 * repeats - 0.1 * fillers
                - length_penalty(n_words, 0, MAX_WORDS, 0.0, LENGTH_PENALTY))
        return min(1.0, max(-0.9, gold))

    def reference(self, prompt):
        return write_summary(post_facts(prompt), ["problem", "reaction", "question"], prompt_rng(prompt),
                             synonym_p=0.0, terse_p=0.0)
