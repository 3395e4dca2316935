"""The embedded demo corpus: seeded, English-like sentences in which ambiguous words occur in different senses.

``make demo`` must show what ELMo does on a fresh machine with no downloads, so the text is generated here
from hand-written templates. Every ambiguous word (bank, play, bat, spring, match, light, ...) has two or three
senses; each sense has its own cue words (``bank``/finance: loan, account, cash ...; ``bank``/river: river,
reeds, ducks ...) and its own sentence templates. The training text mixes

* sentences that use an ambiguous word in one of its senses (the word's context is built from that sense's
  templates and cue words),
* topic sentences that use the cue words without any ambiguous word (so the language model learns which cue
  words belong together), and
* generic filler sentences (people, times, everyday actions).

Held-out sentences are drawn from the same templates with an independent random stream, never repeat a
training sentence, and carry the word, the position of the word and its sense label.

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
from typing import Iterable, Sequence

__all__ = ["Sense", "SENSES", "AMBIGUOUS_WORDS", "LabelledSentence", "DemoCorpus", "generate",
           "check_inventory", "write_corpus", "read_labelled", "sense_cues"]


@dataclass(frozen=True)
class Sense:
    """One sense of an ambiguous word.

    Attributes:
        word: the ambiguous word (lowercase; the same string in every sense).
        name: short sense label, unique among the word's senses (``"finance"``, ``"river"``).
        gloss: a few words explaining the sense (shown by the demo).
        cues: words that only occur near this sense of ``word`` (slot ``{n}`` and ``{m}`` fillers).
        templates: sentences with slots ``{w}`` (the word), ``{n}``/``{m}`` (two different cues),
            ``{who}`` (a subject) and ``{when}`` (a time phrase).
    """

    word: str
    name: str
    gloss: str
    cues: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def label(self) -> str:
        """``word/name``, e.g. ``bank/river``."""
        return f"{self.word}/{self.name}"


def _s(word: str, name: str, gloss: str, cues: str, *templates: str) -> Sense:
    return Sense(word, name, gloss, tuple(cues.split()), tuple(templates))


#: the sense inventory: every ambiguous word with its senses, cue words and templates
SENSES: tuple[Sense, ...] = (
    _s("bank", "finance", "a business that keeps money",
       "money loan account cash savings mortgage cheque teller deposit interest salary credit",
       "{who} took out a {n} from the {w} {when} .",
       "{who} paid the {n} into the {w} {when} .",
       "the {w} said the {n} would be ready {when} .",
       "{who} asked the {w} about the {n} and the {m} .",
       "after the {w} closed , {who} could not get the {n} .",
       "the {w} charged a fee for every {n} .",
       "{who} works at the {w} and counts {n} all day ."),
    _s("bank", "river", "the land along a river",
       "river water fish grass mud reeds ducks stream willow otters herons frogs",
       "{who} sat on the {w} and watched the {n} {when} .",
       "{who} walked along the {w} looking for {n} .",
       "the {n} flooded the {w} {when} .",
       "there were {n} and {m} on the far {w} .",
       "{who} fell asleep in the {n} on the {w} .",
       "the {w} was covered in {n} after the storm .",
       "{who} pulled the boat up onto the {w} near the {n} ."),
    _s("play", "theatre", "a drama performed on a stage",
       "stage actors audience script theatre director scene curtain tickets costumes rehearsal playwright",
       "{who} watched a {w} at the {n} {when} .",
       "the {n} of the {w} were wonderful .",
       "{who} wrote a {w} about the {n} .",
       "the new {w} opened {when} and the {n} loved it .",
       "{who} bought {n} for the {w} {when} .",
       "in the second {n} of the {w} the {m} changed .",
       "the {w} was so long that the {n} left early ."),
    _s("play", "game", "to take part in a game or sport",
       "football tennis chess cards ball team coach goal golf hockey volleyball teammates",
       "{who} likes to {w} {n} {when} .",
       "{who} wanted to {w} {n} with the {m} .",
       "the children went outside to {w} {n} .",
       "{who} will {w} {n} for the school {when} .",
       "we used to {w} {n} every weekend .",
       "{who} taught me how to {w} {n} .",
       "nobody wanted to {w} {n} in the rain ."),
    _s("bat", "animal", "a small flying mammal",
       "cave wings insects fur moths barn roof dusk echoes colony mosquitoes attic",
       "a {w} flew out of the {n} at dusk .",
       "{who} saw a {w} hanging from the {n} {when} .",
       "the {w} caught {n} above the pond .",
       "{who} found a sleeping {w} in the {n} .",
       "a tiny {w} with brown {n} lived in the {m} .",
       "the {w} uses {n} to find {m} in the dark .",
       "{who} heard a {w} squeak in the {n} ."),
    _s("bat", "sport", "a club used to hit a ball",
       "baseball cricket pitch swing pitcher glove innings batter umpire wicket stumps helmet",
       "{who} swung the {w} at the {n} {when} .",
       "{who} bought a new {w} for {n} .",
       "the {n} dropped the {w} and ran .",
       "{who} hit the ball with the {w} during {n} practice .",
       "a wooden {w} and a {n} lay on the bench .",
       "the {w} cracked in the last {n} .",
       "{who} held the {w} tightly and waited for the {n} ."),
    _s("spring", "season", "the season after winter",
       "flowers april blossom lambs tulips gardens daffodils birds sunshine buds meadows showers",
       "{who} loves the {n} in {w} .",
       "in {w} the {n} come back to the {m} .",
       "{who} planted {n} {when} , early in the {w} .",
       "the {w} was warm and full of {n} .",
       "every {w} {who} walks among the {n} .",
       "the {n} arrived late this {w} .",
       "{who} said that {w} is the best time for {n} ."),
    _s("spring", "coil", "a metal coil that returns to its shape",
       "metal coil mattress steel clock bolt screws lever hinge gears piston trampoline",
       "{who} replaced the broken {w} in the {n} .",
       "the {w} inside the {n} snapped {when} .",
       "{who} pressed the {n} and the {w} pushed it back .",
       "a steel {w} holds the {n} in place .",
       "the old {n} needed a stronger {w} .",
       "{who} bought a {w} and two {n} at the hardware shop .",
       "the {w} was made of {n} and wound very tight ."),
    _s("spring", "water", "a place where water comes out of the ground",
       "mountain well valley rocks drinking village pool cliff cave hikers thirst pipes",
       "{who} drank from the {w} in the {n} .",
       "the village gets its water from a {w} near the {n} .",
       "a hot {w} bubbled up between the {n} .",
       "{who} filled the bottles at the {w} by the {n} .",
       "the {n} led down to a clear {w} .",
       "the {w} never dries up , even in the {n} .",
       "{who} followed the {n} to the {w} ."),
    _s("match", "fire", "a small stick that makes a flame",
       "candle fire stove flame smoke fireplace matchbox lantern campfire kindling wick ashes",
       "{who} struck a {w} to start the {n} .",
       "{who} lit the {n} with a {w} {when} .",
       "the {w} went out before the {n} caught .",
       "there was only one {w} left for the {n} .",
       "a burning {w} fell into the {n} .",
       "{who} needed a dry {w} for the {n} .",
       "the {w} burned down before the {n} was ready ."),
    _s("match", "contest", "a game between two sides",
       "team score referee stadium fans goal tournament league final players opponents trophy",
       "{who} watched the {w} at the {n} {when} .",
       "the {w} ended with a late {n} .",
       "the {n} stopped the {w} because of the rain .",
       "{who} won the {w} against the {n} .",
       "the whole {n} came to the {w} .",
       "the {w} was the most important of the {n} .",
       "after the {w} the {n} sang all night ."),
    _s("light", "illumination", "brightness that lets us see",
       "lamp room switch sun window bulb shadows ceiling torch lantern glow dark",
       "{who} turned on the {w} in the {n} .",
       "the {w} from the {n} was too bright .",
       "{who} could not read because the {w} was so weak in the {n} .",
       "the {w} of the {n} filled the {m} .",
       "{who} switched off the {w} in the {n} {when} .",
       "there was no {w} in the {n} at all .",
       "the {w} made long {n} across the {m} ."),
    _s("light", "weight", "not heavy",
       "bag suitcase feather luggage kilograms backpack parcel carry weighs box boxes load",
       "the {n} was {w} enough to carry .",
       "{who} packed a {w} {n} for the trip .",
       "the {n} felt as {w} as a {m} .",
       "{who} chose the {w} {n} because of the stairs .",
       "this {n} is {w} and easy to lift .",
       "{who} only takes a {w} {n} {when} .",
       "the {n} is very {w} , it weighs almost nothing ."),
    _s("bark", "dog", "the sound a dog makes",
       "dog puppy neighbours yard gate leash kennel postman collar fence puppies growl",
       "the {n} let out a loud {w} {when} .",
       "{who} heard the {w} of the {n} at the {m} .",
       "the {w} of the {n} woke everyone .",
       "a sharp {w} came from the {n} .",
       "{who} knew that {w} : it was the {n} .",
       "the {n} answered with a {w} and a {m} .",
       "one {w} from the {n} scared the {m} away ."),
    _s("bark", "tree", "the outer skin of a tree",
       "tree oak trunk moss beetles branches pine forest woodpecker birch sap lichen",
       "the {w} of the old {n} was rough .",
       "{who} peeled some {w} from the {n} .",
       "{n} live under the {w} of the {m} .",
       "the {w} on the {n} was covered in {m} .",
       "{who} touched the smooth {w} of the {n} {when} .",
       "the {w} protects the {n} from the cold .",
       "a {n} made holes in the {w} ."),
    _s("mouse", "animal", "a small rodent",
       "cheese cat kitchen hole tail trap whiskers field crumbs nest barn rats",
       "a {w} ran across the {n} {when} .",
       "the {n} chased the {w} into a {m} .",
       "{who} found a {w} in the {n} .",
       "the little {w} ate the {n} .",
       "{who} set a {n} for the {w} .",
       "the {w} hid in its {n} all day .",
       "a grey {w} with a long {n} sat in the {m} ."),
    _s("mouse", "computer", "a device that moves a pointer",
       "computer screen click cursor keyboard cable laptop button desk monitor software scroll",
       "{who} plugged the {w} into the {n} .",
       "the {w} stopped working and the {n} froze .",
       "{who} moved the {w} to the edge of the {n} .",
       "a wireless {w} and a {n} were on the {m} .",
       "{who} bought a new {w} for the {n} {when} .",
       "double {n} the {w} to open the file .",
       "the {n} of the {w} was broken ."),
    _s("crane", "bird", "a tall bird with long legs",
       "lake feathers marsh nest wetland beak pond wading migration flock birdwatchers frogs",
       "a {w} stood still in the {n} {when} .",
       "{who} watched a {w} fly over the {n} .",
       "the {w} built its {n} near the {m} .",
       "a white {w} caught a fish in the {n} .",
       "the {n} counted every {w} on the {m} .",
       "the {w} spread its {n} and flew off .",
       "a {w} with grey {n} walked along the {m} ."),
    _s("crane", "machine", "a machine that lifts heavy things",
       "construction building steel site operator tower concrete beams cargo port lifting workers",
       "the {w} lifted the {n} onto the roof .",
       "{who} drives a {w} at the {n} .",
       "a huge {w} stood over the {n} {when} .",
       "the {n} climbed into the {w} at dawn .",
       "the {w} dropped a load of {n} .",
       "{who} saw the {w} move the {n} at the {m} .",
       "the tallest {w} in the {n} broke down ."),
    _s("seal", "animal", "a sea mammal",
       "ocean beach ice waves pup harbour fishermen flippers whales penguins rocks shore",
       "a {w} was sleeping on the {n} {when} .",
       "{who} saw a {w} swimming in the {n} .",
       "the {w} and its {n} lay on the {m} .",
       "a grey {w} caught fish near the {n} .",
       "the {n} fed the {w} every morning .",
       "the {w} slid off the {n} into the water .",
       "{who} took a photo of a {w} on the {n} ."),
    _s("seal", "closure", "something that closes a thing tightly",
       "envelope letter wax jar lid package document bottle stamp king lock container",
       "{who} broke the {w} on the {n} {when} .",
       "the {w} of the {n} was made of red {m} .",
       "the {n} had a royal {w} .",
       "{who} checked that the {w} on the {n} was tight .",
       "the {w} kept air out of the {n} .",
       "{who} pressed the {w} into the hot {n} .",
       "without a {w} the {n} would leak ."),
    _s("key", "lock", "a piece of metal that opens a lock",
       "door lock pocket car house drawer keyring locksmith safe garage padlock apartment",
       "{who} lost the {w} to the {n} {when} .",
       "the {w} did not fit the {n} .",
       "{who} left the {w} in the {n} .",
       "the {n} made a new {w} for the {m} .",
       "{who} turned the {w} and opened the {n} .",
       "a spare {w} was hidden under the {n} .",
       "the {w} to the {n} was on the {m} ."),
    _s("key", "music", "the scale a piece of music is in",
       "piano song melody chord orchestra singer guitar symphony choir notes composer tune",
       "the {n} was written in a minor {w} .",
       "{who} played the {n} in a different {w} .",
       "the {n} changed the {w} of the {m} .",
       "the {w} of the {n} was too high for {who2} .",
       "{who} asked the {n} to sing it in a lower {w} .",
       "the {n} moves to a major {w} at the end .",
       "{who} could not find the right {w} for the {n} ."),
)

AMBIGUOUS_WORDS: tuple[str, ...] = tuple(dict.fromkeys(s.word for s in SENSES))

#: sentence subjects (``{who}``); ``{who2}`` is the matching possessive/object form
_WHO = (("my sister", "her"), ("the old man", "his"), ("a young teacher", "her"), ("our neighbour", "his"),
        ("my father", "him"), ("anna", "her"), ("tom", "him"), ("the students", "them"), ("my friend", "her"),
        ("the doctor", "her"), ("his wife", "her"), ("a tourist", "him"), ("uncle peter", "him"),
        ("the farmer", "him"), ("maria", "her"), ("james", "him"), ("our teacher", "her"), ("she", "her"),
        ("he", "him"), ("my brother", "him"), ("the boy", "him"), ("the girl", "her"), ("sam", "him"),
        ("grandma", "her"), ("the new manager", "her"), ("a stranger", "him"), ("lucy", "her"), ("we", "us"),
        ("they", "them"), ("the twins", "them"))
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
        template: index of the template in the sense's ``templates`` (for analysis).
    """

    tokens: tuple[str, ...]
    index: int
    word: str
    sense: str
    template: int

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
            for k, t in enumerate(a.templates):
                words = t.split()
                if words[0] == "{w}" or words.count("{w}") != 1:
                    raise ValueError(f"{a.label} template {k}: expected one {{w}}, not first: {t!r}")
                if "{n}" not in words:
                    raise ValueError(f"{a.label} template {k}: expected a {{n}} cue slot: {t!r}")
                literal = {w for w in words if not w.startswith("{")}
                other = set().union(*(set(b.cues) for b in senses if b is not a))
                if literal & (other | ambiguous):
                    raise ValueError(f"{a.label} template {k}: literal words {sorted(literal & (other | ambiguous))} "
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
    k = rng.randrange(len(sense.templates))
    tokens, index = _fill(sense.templates[k], rng, sense.word, sense.cues)
    return LabelledSentence(tuple(tokens), index, sense.word, sense.name, k)


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
        if got < heldout_per_sense:  # the template space is far larger than any sensible request
            raise ValueError(f"{sense.label}: could only generate {got} distinct held-out sentences")
    return DemoCorpus(tuple(train), tuple(heldout), seed)


def _atomic_write(path: str, lines: Iterable[str]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def write_corpus(corpus: DemoCorpus, directory: str | os.PathLike) -> dict[str, str]:
    """Write ``train.txt`` (one sentence per line) and ``heldout.tsv`` (index, word, sense, template, text).

    Returns the paths by name (``"train"``, ``"heldout"``). Files are written atomically.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    train = os.path.join(directory, "train.txt")
    heldout = os.path.join(directory, "heldout.tsv")
    _atomic_write(train, (" ".join(s) for s in corpus.train))
    _atomic_write(heldout, (f"{s.index}\t{s.word}\t{s.sense}\t{s.template}\t{s.text}" for s in corpus.heldout))
    return {"train": train, "heldout": heldout}


def read_labelled(path: str | os.PathLike) -> list[LabelledSentence]:
    """Read a ``heldout.tsv`` written by :func:`write_corpus` (errors name the file and line)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5:
                raise ValueError(f"{path}: line {lineno}: expected 5 tab-separated fields "
                                 f"(index, word, sense, template, text), found {len(fields)}")
            index_s, word, sense, template_s, text = fields
            tokens = tuple(text.split())
            if not index_s.isdigit() or int(index_s) >= len(tokens) or tokens[int(index_s)] != word:
                raise ValueError(f"{path}: line {lineno}: expected the word {word!r} at token {index_s}, "
                                 f"found {text!r}")
            out.append(LabelledSentence(tokens, int(index_s), word, sense, int(template_s)))
    return out
