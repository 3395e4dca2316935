"""The embedded demo corpus: seeded, English-like sentences in which ambiguous words occur in different senses.

``make demo`` must show what ELMo does on a fresh machine with no downloads, so the text is generated here
from hand-written pieces. Every ambiguous word (bank, play, bat, spring, match, light, ...) has two or three
senses; each sense has its own cue words (``bank``/finance: loan, account, cash ...; ``bank``/river: river,
reeds, ducks ...), its own sentence beginnings (``prefixes``, ending right before the word) and endings
(``suffixes``, starting right after it). The training text mixes

* sentences that use an ambiguous word in one of its senses: a prefix and a suffix of that sense, drawn
  independently, with cue words in their slots,
* topic sentences that use the cue words without any ambiguous word (so the language model learns which cue
  words belong together), and
* generic filler sentences (people, times, everyday actions).

Held-out sentences are drawn from the same pieces with an independent random stream, never repeat a
training sentence, and carry the word, its position, its sense label and which prefix and suffix they use (so
that an evaluation can ask for neighbours that share neither).

Rules that keep the sense labels honest (checked by :func:`check_inventory` and the tests):

* the ambiguous word never starts a sentence (so capitalisation never gives the sense away: the token
  layer sees exactly the same string in every sense);
* the cue words of the senses of one word are disjoint, and no generic slot filler is a cue word or an
  ambiguous word;
* a labelled sentence contains its ambiguous word exactly once.

Everything is deterministic given the seed (Python's :class:`random.Random`, no global state).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Sequence

from .atomic import write_lines
from .errors import UserError

__all__ = ["Sense", "SENSES", "AMBIGUOUS_WORDS", "LabelledSentence", "DemoCorpus", "generate",
           "check_inventory", "write_corpus", "read_labelled", "sense_cues"]


@dataclass(frozen=True)
class Sense:
    """One sense of an ambiguous word.

    A sentence in this sense is ``prefix + word + suffix`` with the prefix and the suffix drawn independently
    from the sense's pools, so that the words right before and right after the ambiguous word depend on the
    sense but not on each other: a language model that predicts the next (or previous) word has to carry the
    *sense* across, not the particular sentence frame.

    Attributes:
        word: the ambiguous word (lowercase; the same string in every sense).
        name: short sense label, unique among the word's senses (``"finance"``, ``"river"``).
        gloss: a few words explaining the sense.
        cues: words that only occur near this sense of ``word`` (slot ``{n}`` and ``{m}`` fillers).
        prefixes: what comes before the word (never empty: the word never starts a sentence).
        suffixes: what comes after the word; each holds a ``{n}`` cue slot. Slots in both: ``{n}``/``{m}``
            (two different cues), ``{who}`` (a subject), ``{when}`` (a time phrase).
    """

    word: str
    name: str
    gloss: str
    cues: tuple[str, ...]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]

    @property
    def label(self) -> str:
        """``word/name``, e.g. ``bank/river``."""
        return f"{self.word}/{self.name}"


def _s(word: str, name: str, gloss: str, cues: str, prefixes: Sequence[str], suffixes: Sequence[str]) -> Sense:
    return Sense(word, name, gloss, tuple(cues.split()), tuple(prefixes), tuple(suffixes))


#: the sense inventory: every ambiguous word with its senses, cue words and sentence pieces
SENSES: tuple[Sense, ...] = (
    _s("bank", "finance", "a business that keeps money",
       "money loan account cash savings mortgage cheque teller deposit interest salary credit",
       ["{who} took out a {m} from the", "{who} paid the {m} into the", "{who} asked the", "{who} works at the",
        "{who} went to the", "{who} complained to the", "{who} called the"],
       ["about the {n} {when} .", "to ask for a {n} .", "and counted the {n} .", "because the {n} was wrong .",
        "for a bigger {n} .", "after the {n} was approved .", "about the {n} and the {m} ."]),
    _s("bank", "river", "the land along a river",
       "river water fish grass mud reeds ducks stream willow otters herons frogs",
       ["{who} sat on the", "{who} walked along the", "the {m} flooded the", "{who} fell asleep on the",
        "{who} pulled the boat onto the", "{who} climbed up the muddy", "{who} found {m} on the"],
       ["and watched the {n} {when} .", "looking for {n} .", "near the {n} .", "where the {n} hide .",
        "covered in {n} after the storm .", "next to the {n} and the {m} .", "and fed the {n} ."]),
    _s("play", "theatre", "a drama performed on a stage",
       "stage actors audience script theatre director scene curtain tickets costumes rehearsal playwright",
       ["{who} watched a", "{who} wrote a", "{who} bought {m} for the", "the {m} loved the", "{who} directed the",
        "{who} fell asleep during the", "everyone talked about the new"],
       ["at the {n} {when} .", "about the {n} .", "with famous {n} .", "because the {n} were so good .",
        "and met the {n} afterwards .", "until the {n} came down .", "with the {n} and the {m} ."]),
    _s("play", "game", "to take part in a game or sport",
       "football tennis chess cards ball team coach goal golf hockey volleyball teammates",
       ["{who} likes to", "{who} wanted to", "the children went outside to", "{who} will", "we used to",
        "{who} taught me how to", "nobody could"],
       ["{n} {when} .", "{n} with the {m} .", "{n} every weekend .", "{n} for the school .", "{n} in the rain .",
        "{n} against the {m} .", "{n} after school ."]),
    _s("bat", "animal", "a small flying mammal",
       "cave wings insects fur moths barn roof dusk echoes colony mosquitoes attic",
       ["{who} saw a", "{who} found a sleeping", "there was a tiny", "{who} heard a", "the {m} woke up a",
        "{who} took a photo of a", "{who} watched the"],
       ["fly out of the {n} at night .", "hanging from the {n} .", "catching {n} above the pond .",
        "in the {n} {when} .", "with brown {n} .", "squeak in the {n} .", "that lived in the {n} with the {m} ."]),
    _s("bat", "sport", "a club used to hit a ball",
       "baseball cricket pitch swing pitcher glove innings batter umpire wicket stumps helmet",
       ["{who} swung the", "{who} bought a new", "{who} dropped the", "{who} held the", "the {m} picked up the",
        "{who} cracked the", "{who} lent me a wooden"],
       ["at the {n} {when} .", "for {n} .", "and ran to the {n} .", "during {n} practice .",
        "and waited for the {n} .", "in the last {n} .", "before the {n} started ."]),
    _s("spring", "season", "the season after winter",
       "flowers april blossom lambs tulips gardens daffodils birds sunshine buds meadows showers",
       ["{who} loves the {m} in", "{who} planted {m} in", "everything is green in", "{who} always waits for",
        "the {m} come back every", "{who} takes long walks in", "{who} was born in"],
       ["when the {n} come back .", ", when the {n} bloom .", "because of the {n} .", "and the {n} .",
        "with {n} everywhere .", "among the {n} .", ", just like the {n} ."]),
    _s("spring", "coil", "a metal coil that returns to its shape",
       "metal coil mattress steel clock bolt screws lever hinge gears piston trampoline",
       ["{who} replaced the broken", "{who} pressed the", "{who} bought a", "{who} fixed the",
        "the old {m} needed a stronger", "{who} stretched the", "{who} oiled the"],
       ["in the {n} .", "inside the {n} {when} .", "made of {n} .", "that holds the {n} in place .",
        "and two {n} at the hardware shop .", "under the {n} .", "next to the {n} and the {m} ."]),
    _s("spring", "water", "a place where water comes out of the ground",
       "mountain well valley rocks hills village pool cliff cave hikers stones pipes",
       ["{who} drank from the", "the village gets its water from a", "{who} filled the bottles at the",
        "{who} followed the {m} to the", "{who} found a clear", "{who} washed in a hot", "{who} rested by the"],
       ["in the {n} .", "near the {n} .", "between the {n} .", "by the {n} {when} .", "below the {n} .",
        "high above the {n} .", "under the {n} and the {m} ."]),
    _s("match", "fire", "a small stick that makes a flame",
       "candle fire stove flame smoke fireplace matchbox lantern campfire kindling wick ashes",
       ["{who} struck a", "{who} lit the {m} with a", "there was only one", "{who} needed a dry",
        "{who} dropped a burning", "{who} found a", "{who} blew out the"],
       ["to start the {n} .", "and lit the {n} {when} .", "for the {n} .", "near the {n} .",
        "before the {n} caught .", "next to the {n} .", "and held it to the {n} ."]),
    _s("match", "contest", "a game between two sides",
       "team score referee stadium fans goal tournament league final players opponents trophy",
       ["{who} watched the", "{who} won the", "the {m} came to the", "{who} missed the", "the rain stopped the",
        "{who} bought tickets for the", "{who} talked about the"],
       ["at the {n} {when} .", "against the {n} .", "with the {n} .", "before the {n} went home .",
        "and the {n} sang all night .", "after a late {n} .", "of the {n} ."]),
    _s("light", "illumination", "brightness that lets us see",
       "lamp room switch sun window bulb shadows ceiling torch lantern glow dark",
       ["{who} turned on the", "{who} switched off the", "{who} could not read in the weak", "the {m} blocked the",
        "{who} saw a bright", "{who} loves the warm", "there was no"],
       ["in the {n} .", "from the {n} {when} .", "of the {n} .", "above the {n} .", "through the {n} .",
        "that made long {n} .", "over the {n} and the {m} ."]),
    _s("light", "weight", "not heavy",
       "bag suitcase backpack parcel box jacket tent blanket basket bicycle luggage trolley",
       ["{who} packed a", "{who} chose the", "{who} only carries a", "{who} bought a very", "the shop sells a",
        "{who} wanted a", "{who} asked for a"],
       ["{n} for the trip .", "{n} because of the stairs .", "{n} that weighs almost nothing .",
        "{n} that is easy to lift .", "{n} {when} .", "{n} and a heavy {m} .", "{n} for the long walk ."]),
    _s("bark", "dog", "the sound a dog makes",
       "dog puppy neighbours yard gate kennel postman fence puppies terrier sheepdog garden",
       ["{who} heard the", "the {m} let out a loud", "{who} knew that", "{who} was woken by the",
        "{who} recognised the", "there was a sharp", "{who} laughed at the"],
       ["of the {n} {when} .", "from the {n} .", "of the {n} at the {m} .", "behind the {n} .",
        "of the old {n} .", "near the {n} .", "coming from the {n} ."]),
    _s("bark", "tree", "the outer skin of a tree",
       "tree oak trunk moss beetles branches pine forest woodpecker birch sap lichen",
       ["{who} touched the rough", "{who} peeled some", "beetles live under the", "{who} carved a name into the",
        "{who} collected", "{who} painted the grey", "{who} studied the"],
       ["of the old {n} .", "from the {n} {when} .", "on the {n} .", "of the {n} in the {m} .",
        "covered in {n} .", "of a fallen {n} .", "near the {n} ."]),
    _s("mouse", "animal", "a small rodent",
       "cheese cat kitchen hole tail trap whiskers field crumbs nest barn rats",
       ["{who} saw a", "the cat chased a", "{who} found a", "{who} caught a little", "there was a grey",
        "{who} set a trap for the", "{who} heard a"],
       ["in the {n} {when} .", "under the {n} .", "eating the {n} .", "with a long {n} .",
        "that lived in a {n} .", "near the {n} .", "behind the {n} and the {m} ."]),
    _s("mouse", "computer", "a device that moves a pointer",
       "computer screen printer cursor keyboard cable laptop button desk monitor software tablet",
       ["{who} plugged in the", "{who} bought a new", "{who} moved the", "{who} clicked the", "{who} cleaned the",
        "{who} dropped the wireless", "{who} borrowed my"],
       ["for the {n} {when} .", "next to the {n} .", "of the {n} .", "and the {n} froze .", "with the {n} .",
        "and the {n} stopped working .", "to the edge of the {n} ."]),
    _s("crane", "bird", "a tall bird with long legs",
       "lake feathers marsh nest wetland beak pond swamp flock birdwatchers frogs reeds",
       ["{who} watched a", "{who} photographed a white", "there was a tall", "{who} saw the", "the {m} scared a",
        "{who} counted every", "{who} drew a grey"],
       ["in the {n} {when} .", "flying over the {n} .", "standing in the {n} .", "near its {n} .",
        "catching fish in the {n} .", "with long {n} .", "by the {n} and the {m} ."]),
    _s("crane", "machine", "a machine that lifts heavy things",
       "building steel site operator tower concrete beams cargo port workers containers bridge",
       ["{who} drives a", "{who} operated the", "the {m} repaired the", "{who} saw a huge", "the storm damaged the",
        "{who} climbed the tallest", "the company rented a"],
       ["at the {n} {when} .", "that lifted the {n} .", "over the {n} .", "near the {n} .", "and moved the {n} .",
        "on the {n} .", "above the {n} and the {m} ."]),
    _s("seal", "animal", "a sea mammal",
       "ocean beach ice waves pup harbour fishermen flippers whales penguins rocks shore",
       ["{who} saw a", "{who} took a photo of a", "the {m} fed the", "there was a grey", "{who} swam with a",
        "{who} counted every", "{who} watched a young"],
       ["on the {n} {when} .", "swimming in the {n} .", "near the {n} .", "catching fish by the {n} .",
        "sleeping on the {n} .", "with its {n} .", "between the {n} and the {m} ."]),
    _s("seal", "closure", "something that closes a thing tightly",
       "envelope letter wax jar lid package document bottle stamp king lock container",
       ["{who} broke the", "{who} checked the", "{who} pressed the", "the king put his", "{who} replaced the rubber",
        "{who} cut the", "{who} found a red"],
       ["on the {n} {when} .", "of the {n} .", "on the {n} and the {m} .", "around the {n} .",
        "that kept the {n} closed .", "under the {n} .", "made of {n} ."]),
    _s("key", "lock", "a piece of metal that opens a lock",
       "door lock pocket car house drawer keyring locksmith safe garage padlock apartment",
       ["{who} lost the", "{who} left the", "{who} turned the", "{who} found a spare", "{who} copied the",
        "the {m} made a new", "{who} hid the"],
       ["to the {n} {when} .", "in the {n} .", "under the {n} .", "of the {n} .", "for the {n} .",
        "to the {n} and the {m} .", "next to the {n} ."]),
    _s("key", "music", "the scale a piece of music is in",
       "piano song melody chord orchestra singer guitar symphony choir notes composer tune",
       ["the {m} was written in a minor", "{who} played it in a different", "{who} changed the",
        "{who} could not find the right", "the {m} moves to a major", "{who} sang in a lower",
        "{who} asked for a higher"],
       ["for the {n} .", "with the {n} {when} .", "of the {n} .", "so the {n} could sing .",
        "because the {n} was too high .", "for the {n} and the {m} .", "in the middle of the {n} ."]),
)

AMBIGUOUS_WORDS: tuple[str, ...] = tuple(dict.fromkeys(s.word for s in SENSES))

#: sentence subjects (``{who}``); ``{who2}`` is the matching possessive/object form
_WHO = (("my sister", "her"), ("the old man", "him"), ("a young teacher", "her"), ("our neighbour", "him"),
        ("my father", "him"), ("anna", "her"), ("tom", "him"), ("my friend", "her"),
        ("the doctor", "her"), ("his wife", "her"), ("a tourist", "him"), ("uncle peter", "him"),
        ("the farmer", "him"), ("maria", "her"), ("james", "him"), ("our teacher", "her"), ("she", "her"),
        ("he", "him"), ("my brother", "him"), ("the boy", "him"), ("the girl", "her"), ("sam", "him"),
        ("grandma", "her"), ("the new manager", "her"), ("a stranger", "him"), ("lucy", "her"))
_WHEN = ("yesterday", "last week", "on sunday", "this morning", "in the afternoon", "every day", "last year",
         "on monday", "today", "again", "once", "at last", "on friday", "two days ago", "last month",
         "on saturday", "this week", "right away", "later that day", "early on tuesday")

#: topic sentences: cue words of one sense together, no ambiguous word
_TOPIC = ("{who} talked about the {n} and the {m} {when} .",
          "there was a {n} next to the {m} .",
          "{who} liked the {n} more than the {m} .",
          "the {n} and the {m} were there {when} .",
          "{who} thought about the {n} all day .",
          "{who} told us a story about the {n} and the {m} .",
          "nobody expected the {n} to be so close to the {m} .",
          "{who} took a picture of the {n} {when} .")

#: generic filler sentences (no cue word, no ambiguous word)
_FILLER = ("{who} went home {when} .",
           "{who} was tired after the long day .",
           "{who} did not say anything {when} .",
           "{who} called me {when} and we talked for an hour .",
           "{who} made coffee and read the news .",
           "it was a quiet day , so {who} stayed inside .",
           "{who} forgot the name of the street .",
           "{who} smiled and said thank you .",
           "{who} has lived in this town for ten years .",
           "{who} was late {when} because the bus never came .",
           "we had dinner together {when} .",
           "{who} sent a long message to an old friend .",
           "{who} cleaned the whole flat {when} .",
           "{who} laughed at the joke .",
           "{who} waited at the station for an hour .",
           "everyone agreed that it was a good idea .")


@dataclass(frozen=True)
class LabelledSentence:
    """A held-out sentence with one ambiguous word and its sense.

    Attributes:
        tokens: the whitespace tokens (first token capitalised, the ambiguous word never first).
        index: position of the ambiguous word in ``tokens``.
        word: the ambiguous word (``tokens[index] == word``).
        sense: the sense name (``Sense.name``); ``word/sense`` is :attr:`label`.
        prefix, suffix: indices into the sense's ``prefixes`` and ``suffixes``.
    """

    tokens: tuple[str, ...]
    index: int
    word: str
    sense: str
    prefix: int
    suffix: int

    @property
    def label(self) -> str:
        return f"{self.word}/{self.sense}"

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True)
class DemoCorpus:
    """Generated text: ``train`` sentences (token lists) and labelled ``heldout`` sentences."""

    train: tuple[tuple[str, ...], ...]
    heldout: tuple[LabelledSentence, ...]
    seed: int

    @property
    def n_train_tokens(self) -> int:
        return sum(len(s) for s in self.train)


def sense_cues(word: str) -> dict[str, frozenset[str]]:
    """Sense name -> its cue words, for one ambiguous word."""
    out = {s.name: frozenset(s.cues) for s in SENSES if s.word == word}
    if not out:
        raise KeyError(f"{word!r} is not an ambiguous word of the demo corpus; expected one of {AMBIGUOUS_WORDS}")
    return out


def check_inventory() -> None:
    """Raise ``ValueError`` if the inventory breaks a rule that the sense labels rely on (see module doc)."""
    ambiguous = set(AMBIGUOUS_WORDS)
    all_cues = {c for s in SENSES for c in s.cues}
    generic = set()
    for who, who2 in _WHO:
        generic.update(who.split())
        generic.add(who2)
    for phrase in _WHEN:
        generic.update(phrase.split())
    for t in _TOPIC + _FILLER:
        generic.update(w for w in t.split() if not w.startswith("{"))
    bad = sorted(generic & (all_cues | ambiguous))
    if bad:
        raise ValueError(f"generic words that are also cue or ambiguous words: {bad}")
    for word in AMBIGUOUS_WORDS:
        senses = [s for s in SENSES if s.word == word]
        names = [s.name for s in senses]
        if len(set(names)) != len(names) or len(senses) < 2:
            raise ValueError(f"{word}: expected >= 2 senses with distinct names, found {names}")
        for i, a in enumerate(senses):
            if ambiguous & set(a.cues):
                raise ValueError(f"{a.label}: cue words {sorted(ambiguous & set(a.cues))} are ambiguous words")
            for b in senses[i + 1:]:
                shared = set(a.cues) & set(b.cues)
                if shared:
                    raise ValueError(f"{a.label} and {b.label} share cue words {sorted(shared)}")
            other = set().union(*(set(b.cues) for b in senses if b is not a))
            pieces = [("prefix", k, t) for k, t in enumerate(a.prefixes)] + \
                     [("suffix", k, t) for k, t in enumerate(a.suffixes)]
            for kind, k, t in pieces:
                words = t.split()
                if not words or "{w}" in words:
                    raise ValueError(f"{a.label} {kind} {k}: expected a non-empty piece without {{w}}: {t!r}")
                if kind == "suffix" and "{n}" not in words:
                    raise ValueError(f"{a.label} suffix {k}: expected a {{n}} cue slot: {t!r}")
                literal = {w for w in words if not w.startswith("{")}
                if literal & (other | ambiguous):
                    raise ValueError(f"{a.label} {kind} {k}: literal words {sorted(literal & (other | ambiguous))} "
                                     f"are cues of another sense or ambiguous words")


def _fill(template: str, rng: random.Random, word: str = "", cues: Sequence[str] = ()) -> tuple[list[str], int]:
    """Fill one template; returns the tokens (first capitalised) and the position of ``{w}`` (-1 if none)."""
    n, m = rng.sample(list(cues), 2) if cues else ("", "")
    who, who2 = rng.choice(_WHO)
    when = rng.choice(_WHEN)
    tokens: list[str] = []
    index = -1
    for slot in template.split():
        if slot == "{w}":
            index = len(tokens)
            tokens.append(word)
        elif slot == "{n}":
            tokens.append(n)
        elif slot == "{m}":
            tokens.append(m)
        elif slot == "{who}":
            tokens.extend(who.split())
        elif slot == "{who2}":
            tokens.append(who2)
        elif slot == "{when}":
            tokens.extend(when.split())
        else:
            tokens.append(slot)
    tokens[0] = tokens[0][:1].upper() + tokens[0][1:]
    return tokens, index


def _sense_sentence(sense: Sense, rng: random.Random) -> LabelledSentence:
    i = rng.randrange(len(sense.prefixes))
    j = rng.randrange(len(sense.suffixes))
    tokens, index = _fill(f"{sense.prefixes[i]} {{w}} {sense.suffixes[j]}", rng, sense.word, sense.cues)
    return LabelledSentence(tuple(tokens), index, sense.word, sense.name, i, j)


def generate(seed: int = 0, n_train: int = 8000, heldout_per_sense: int = 20,
             ambiguous_fraction: float = 0.5, topic_fraction: float = 0.25) -> DemoCorpus:
    """Generate the demo corpus.

    Args:
        seed: everything is a function of this seed.
        n_train: number of training sentences (about 10 tokens each).
        heldout_per_sense: labelled held-out sentences per sense (distinct, none of them in ``train``).
        ambiguous_fraction: share of training sentences that use an ambiguous word (senses drawn uniformly).
        topic_fraction: share of topic sentences (cue words without ambiguous words); the rest is filler.

    Returns:
        :class:`DemoCorpus` with ``train`` (tuples of tokens) and ``heldout`` (grouped by sense, in
        inventory order).
    """
    if n_train < 0 or heldout_per_sense < 0:
        raise ValueError(f"n_train and heldout_per_sense must be >= 0, found {n_train}, {heldout_per_sense}")
    if not (0 <= ambiguous_fraction and 0 <= topic_fraction and ambiguous_fraction + topic_fraction <= 1):
        raise ValueError(f"fractions must be >= 0 and sum to <= 1, found {ambiguous_fraction}, {topic_fraction}")
    rng = random.Random(f"elmo-fast demo corpus train {seed}")
    train: list[tuple[str, ...]] = []
    for _ in range(n_train):
        u = rng.random()
        if u < ambiguous_fraction:
            train.append(_sense_sentence(rng.choice(SENSES), rng).tokens)
        elif u < ambiguous_fraction + topic_fraction:
            sense = rng.choice(SENSES)
            train.append(tuple(_fill(rng.choice(_TOPIC), rng, cues=sense.cues)[0]))
        else:
            train.append(tuple(_fill(rng.choice(_FILLER), rng)[0]))
    seen = set(train)
    held_rng = random.Random(f"elmo-fast demo corpus heldout {seed}")
    heldout: list[LabelledSentence] = []
    for sense in SENSES:
        got = 0
        for _ in range(1000 * max(heldout_per_sense, 1)):
            if got == heldout_per_sense:
                break
            s = _sense_sentence(sense, held_rng)
            if s.tokens in seen:
                continue
            seen.add(s.tokens)
            heldout.append(s)
            got += 1
        if got < heldout_per_sense:  # the sentence space is far larger than any sensible request
            raise ValueError(f"{sense.label}: could only generate {got} distinct held-out sentences")
    return DemoCorpus(tuple(train), tuple(heldout), seed)


def write_corpus(corpus: DemoCorpus, directory: str | os.PathLike) -> dict[str, str]:
    """Write ``train.txt`` (one sentence per line) and ``heldout.tsv`` (index, word, sense, prefix, suffix, text).

    Returns the paths by name (``"train"``, ``"heldout"``). Files are written atomically.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    train = os.path.join(directory, "train.txt")
    heldout = os.path.join(directory, "heldout.tsv")
    write_lines(train, (" ".join(s) for s in corpus.train))
    write_lines(heldout, (f"{s.index}\t{s.word}\t{s.sense}\t{s.prefix}\t{s.suffix}\t{s.text}" for s in corpus.heldout))
    return {"train": train, "heldout": heldout}


def read_labelled(path: str | os.PathLike) -> list[LabelledSentence]:
    """Read a ``heldout.tsv`` written by :func:`write_corpus` (errors name the file and line)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 6:
                raise UserError(f"{path}: line {lineno}: expected 6 tab-separated fields "
                                 f"(index, word, sense, prefix, suffix, text), found {len(fields)}")
            index_s, word, sense, prefix_s, suffix_s, text = fields
            tokens = tuple(text.split())
            if not index_s.isdigit() or int(index_s) >= len(tokens) or tokens[int(index_s)] != word:
                raise UserError(f"{path}: line {lineno}: expected the word {word!r} at token {index_s}, "
                                 f"found {text!r}")
            if not (prefix_s.isdigit() and suffix_s.isdigit()):
                raise UserError(f"{path}: line {lineno}: expected integer prefix and suffix indices, found "
                                 f"{prefix_s!r} and {suffix_s!r}")
            out.append(LabelledSentence(tokens, int(index_s), word, sense, int(prefix_s), int(suffix_s)))
    return out
