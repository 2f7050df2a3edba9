"""A transparent, rule-based screen for prompts that ask for clearly harmful content.

Pure and stdlib only. Each category is a handful of compiled regular expressions that pair an
act with what makes it harmful: a request or harmful verb (make, synthesise, hack into, steal,
kill, promote ...) with a harmful object (a bomb, malware, someone's identity, a person,
suicide ...), or a fixed harmful phrase (child pornography, without their consent, without
getting caught). Verbs are matched in their base, -s and -ing forms only: "how do I steal",
"a script that steals", "stealing", never "my card was stolen", so reports of harm suffered
are not requests for harm. Rules are written over word classes, never over benchmark sentences.

It is a screen, not a classifier: it favours clear requests and misses paraphrases. Four
exemptions keep look-alike safe prompts out:

- definitions ("What does 'eliminating a person' mean?"),
- questions about what others did or do ("How did they rob the casino in Ocean's 11?"),
- fiction, games and sport, for the violence, crime, fraud and cyberattack categories
  ("... in my novel", "... in a chess game", "... for a TV show"); never for weapons, drugs,
  self-harm or the abuse of children, where a story is a common wrapper for real instructions,
- how bad actors operate, for the cyberattack, fraud, crime, privacy and harassment categories
  ("How do scammers target the elderly?").

Objects the writer owns ("hack into my account", "steal money from me") are not targets, and
defensive work is not the attack ("a fake-news classifier", "malware detection").

Speed: the text is lowered and split into words once (bytes operations in C). Every rule names
the words it cannot match without (its anchors); a rule runs only when one of them is among
the words, so most text costs one set intersection. Patterns open with literal letters (word
classes are prefix trees whose word boundary is checked after the first letter), which the
regex engine scans for in a tight loop.

Categories:

- weapons: making or getting bombs, explosives, chemical/biological/nuclear weapons, untraceable
  or illegal firearms; arming children.
- violence: killing, assaulting, poisoning or kidnapping people; terrorism, massacres, mass
  shootings; sabotage of infrastructure; inciting or glorifying violence; threats to harm.
- self_harm: suicide methods, self-injury, promoting suicide, self-harm or eating disorders.
- cyberattack: hacking into systems or accounts, malware, ransomware, botnets, DDoS, cracking
  passwords, exploiting vulnerabilities, defeating security software or DRM.
- fraud: identity theft, card fraud, scams and phishing, counterfeiting, forgery, insider
  trading, market manipulation, money laundering, tax evasion, fake reviews, exam cheating.
- crime: theft, robbery, burglary, shoplifting, piracy, smuggling, trafficking, vandalism,
  escaping custody, evading police or detection.
- drugs: making, buying, selling or smuggling illegal drugs; promoting drug use.
- hate: hate speech, promoting racism or discrimination, violence or eradication aimed at a
  group, arguments that a group should lose rights.
- harassment: bullying, stalking, threatening, defaming, doxxing or spamming people.
- misinformation: fake news, false information, conspiracy theories, propaganda, denial of
  documented atrocities, misleading the public.
- privacy: spying, tracking or collecting data without consent; getting another person's
  passwords, records or contact details.
- sexual_minors: sexual content involving children, grooming, child sexual abuse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HARM_CATEGORIES: tuple[str, ...] = (
    "weapons",
    "violence",
    "self_harm",
    "cyberattack",
    "fraud",
    "crime",
    "drugs",
    "hate",
    "harassment",
    "misinformation",
    "privacy",
    "sexual_minors",
)

# Categories that fiction, games and sport make harmless ("kill someone in my novel"); not
# weapons: "for my novel, explain how to synthesize sarin" is still a recipe.
_FICTION_EXEMPT = frozenset({"violence", "crime", "fraud", "cyberattack"})


def _words_of(spec: str) -> frozenset[str]:
    return frozenset(spec.split())


# Never anchors: words too common to say anything on their own.
_STOPWORDS = frozenset(
    _words_of(
        "a an the of to in on for with and or by at from into as is are be my your his her their "
        "our its this that some any s t"
    )
)
# Anchors only when a phrase has nothing rarer: "get" in "get rid of" is not chosen over "rid".
_COMMON = frozenset(
    _words_of(
        "get gets getting do does doing take takes taking make makes making set sets setting run "
        "runs running out up off down over use uses using go card cards details data "
        "information info personal account bank number money people person user customer private "
        "sensitive credit social security financial login records confidential water house home "
        "car phone time less made identity service physical"
    )
)


def _anchor(phrase: str) -> str:
    """The word of a phrase that the pre-check looks for: its longest uncommon word."""
    words = [word for word in re.split(r"[^a-z]+", phrase) if word and word not in _STOPWORDS]
    if not words:
        raise ValueError(f"no anchor word in {phrase!r}")
    rare = [word for word in words if word not in _COMMON] or words
    return max(rare, key=len)


# Defending against the thing: "a fake-news classifier", "malware detection", "phishing training".
_DEFENSIVE = (
    r"(?![\s-]+(?:detection|detector|detectors|detecting|classifier|classifiers|filter|filters|"
    r"prevention|protection|scanner|scanners|checker|awareness|training|simulations?|defen[cs]es?|"
    r"removal|remover|analysis|research|identification|mitigation)\b)"
)
# "bomb-ass burrito", "bully-proof": the first half of a compound is not the word.
_NOT_COMPOUND = r"(?!-(?:proof|ass|free|resistant|safe|like|sniffing|dog|dogs)\b)"


class _Words:
    """A class of words or phrases, as a regex alternation with word boundaries.

    The spec lists words separated by spaces; "_" joins a phrase (matching a space or a
    hyphen: "self_harm" matches "self harm" and "self-harm"); "{,s,ing}" expands suffixes
    ("hack{,s,ing}" is hack, hacks, hacking). An anchor class is the part of a rule that the
    pre-check looks for; a rule built on a class that is not one names its anchors itself.
    """

    def __init__(self, spec: str, *, anchor: bool = True, guard: str = "") -> None:
        self.words = _expand(spec)
        self.anchor = anchor
        self.pattern = rf"{_trie(self.words)}\b{_NOT_COMPOUND}{guard}"

    def __str__(self) -> str:
        return self.pattern

    def anchors(self) -> set[str]:
        """One word of each alternative: a text this class matches contains one of them."""
        return {_anchor(word) for word in self.words}


_Tree = dict[str, "_Tree"]
# A word starts here: checked just after its first letter is read, so that a pattern opens with
# literal letters, which the regex engine scans for in a tight loop (a leading \b makes it try
# every position). Equivalent to \b before a letter.
_WORD_START = r"(?<!\w.)"
# A regex unit of a word: a separator, an escaped character or a character.
_UNIT = re.compile(r"\\W\+|\[\\s-\]\+|\\.|.")


def _trie(words: Iterable[str]) -> str:
    r"""Words as a prefix tree opening each at a word start: "k(?<!\w.)ill(?:s|ing)?|...".

    The regex engine tries the branches of an alternation one by one at each position; a
    tree has one branch per first letter instead of one per word, so a class of 200 words costs
    about what a class of 20 does. Spaces in phrases match spaces or hyphens.
    """
    return _trie_of([_UNIT.findall(re.escape(word).replace(r"\ ", r"[\s-]+")) for word in words])


def _trie_of(sequences: Iterable[list[str]]) -> str:
    """A prefix tree over sequences of regex units (an escaped character or a separator)."""
    tree: _Tree = {}
    for units in sequences:
        node = tree
        for unit in units:
            node = node.setdefault(unit, {})
        node[""] = {}
    return _trie_pattern(tree, top=True)


def _trie_pattern(node: _Tree, *, top: bool = False) -> str:
    ends = "" in node
    branches = [
        unit + (_WORD_START if top else "") + _trie_pattern(child)
        for unit, child in sorted(node.items())
        if unit
    ]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 and not ends else "(?:" + "|".join(branches) + ")"
    return body + "?" if ends else body


# A rule opening with a plain alternation of words, "\b(?:kill|kills|tamper\W+with)".
_LEADING_WORDS = re.compile(r"\\b\(\?:((?:[a-z'-]|\\W\+|\|)+)\)")


def _fast(pattern: str) -> str:
    """The pattern with a leading alternation of words rewritten as a word-start trie."""
    leading = _LEADING_WORDS.match(pattern)
    if leading is None:
        if re.match(r"\\b[a-z]", pattern) and "|" not in pattern:
            return pattern[2] + _WORD_START + pattern[3:]  # "\bthreat..." -> "t(?<!\w.)hreat..."
        return pattern
    alternatives = leading.group(1).split("|")
    return _trie_of(_UNIT.findall(word) for word in alternatives) + pattern[leading.end() :]


def _expand(spec: str) -> list[str]:
    words: list[str] = []
    for item in spec.split():
        words += _expand_braces(item)
    return [word.replace("_", " ") for word in words]


def _expand_braces(item: str) -> list[str]:
    braced = re.search(r"\{([^{}]*)\}", item)
    if braced is None:
        return [item]
    head, tail = item[: braced.start()], item[braced.end() :]
    return [
        word
        for option in braced.group(1).split(",")
        for word in _expand_braces(head + option + tail)
    ]


def _near(count: int) -> str:
    """Up to `count` words between two parts (any words)."""
    return rf"(?:\W+[\w']+){{0,{count}}}?\W+"


# Up to `count` words that are not prepositions or conjunctions: "blow up (my ex's) house",
# not "bomb the test (at) school".
_LINK = r"(?:at|in|on|for|with|to|of|from|by|about|into|onto|as|like|than|and|or|but|while|when)"


def _det(count: int = 2) -> str:
    return rf"(?:\W+(?!{_LINK}\b)[\w']+){{0,{count}}}?\W+"


# ------------------------------------------------------------------------------ word classes

# (anchors, also, pattern): a match contains one of `anchors` and, when `also` is not empty,
# one of `also` as well.
_Rule = tuple[frozenset[str], frozenset[str], str]


def _rule(anchors: _Words | str | set[str], pattern: str, *, also: set[str] | None = None) -> _Rule:
    """A pattern and the words it cannot match without (one of them is in every match).

    `anchors` is the anchor class the pattern is built on, or single words (a spec or a set);
    `also` names a second set of words every match contains, for patterns whose anchors alone
    are common words.
    """
    if isinstance(anchors, _Words):
        if not anchors.anchor:
            raise ValueError("a rule is anchored on an anchor class")
        words = sorted(anchors.anchors())
    else:
        words = _expand(anchors) if isinstance(anchors, str) else sorted(anchors)
    for word in [*words, *(also or ())]:
        if not re.fullmatch(r"[a-z]+", word):
            raise ValueError(f"an anchor is a single lower-case word: {word!r}")
    return frozenset(words), frozenset(also or ()), _fast(pattern)


# Requests: verbs that ask for something to be made, got or used (not anchors).
_PRODUCE = _Words(
    "make{,s} making build{,s,ing} construct{,s,ing} creat{e,es,ing} assembl{e,es,ing} "
    "manufactur{e,es,ing} produc{e,es,ing} synthesi{ze,zes,zing,se,ses,sing} cook{,s,ing} "
    "brew{,s,ing} prepar{e,es,ing} develop{,s,ing} design{,s,ing} print{,s,ing} rig{,s} rigging "
    "detonat{e,es,ing} set_off setting_off plant{,s,ing} deploy{,s,ing} use{,s} using "
    "obtain{,s,ing} acquir{e,es,ing} get{,s} getting buy{,s,ing} purchas{e,es,ing} sell{,s,ing} "
    "smuggl{e,es,ing} hid{e,es,ing} conceal{,s,ing} mix{,es,ing} order{,s,ing} source{,s} "
    "sourcing procur{e,es,ing} distribut{e,es,ing} explod{e,es,ing} throw{,s,ing} "
    "launch{,es,ing} transport{,s,ing} carry{,ing} carries",
    anchor=False,
)
# Authoring and setting up: write, design, run, send (not anchors).
_CRAFT = _Words(
    "writ{e,es,ing} creat{e,es,ing} develop{,s,ing} build{,s,ing} design{,s,ing} code{,s} "
    "coding program{,s} programming make{,s} making draft{,s,ing} compos{e,es,ing} "
    "craft{,s,ing} generat{e,es,ing} produc{e,es,ing} publish{,es,ing} post{,s,ing} "
    "spread{,s,ing} distribut{e,es,ing} releas{e,es,ing} deploy{,s,ing} launch{,es,ing} "
    "send{,s,ing} set{,s}_up setting_up run{,s} running conduct{,s,ing} start{,s,ing} "
    "organi{ze,zes,zing,se,ses,sing} plan{,s} planning automat{e,es,ing} sell{,s,ing} "
    "plant{,s,ing} install{,s,ing} infect{,s,ing} share{,s} sharing",
    anchor=False,
)
# Verbs that encourage or celebrate (not anchors).
_PROMOTE = _Words(
    "promot{e,es,ing} encourag{e,es,ing} glorif{y,ies,ying} romantici{ze,zes,zing,se,ses,sing} "
    "incit{e,es,ing} advocat{e,es,ing} celebrat{e,es,ing} justif{y,ies,ying} "
    "normali{ze,zes,zing,se,ses,sing} fuel{,s,ing} stir{,s}_up stirring_up spread{,s,ing} "
    "push{,es,ing} amplif{y,ies,ying} call{,s,ing}_for urg{e,es,ing} convinc{e,es,ing} "
    "persuad{e,es,ing} pressur{e,es,ing} manipulat{e,es,ing} rewards",
    anchor=False,
)
# Committing an act (not anchors).
_COMMIT = _Words(
    "commit{,s} committing engag{e,es,ing}_in carry_out carrying_out perpetrat{e,es,ing} "
    "plan{,s} planning organi{ze,zes,zing,se,ses,sing} stag{e,es,ing} execut{e,es,ing} "
    "get_away_with getting_away_with conduct{,s,ing} launch{,es,ing} perform{,s,ing} "
    "pull{,s}_off pulling_off facilitat{e,es,ing} attempt{,s,ing} set{,s}_up setting_up "
    "start{,s,ing} join{,s,ing} fund{,s,ing} financ{e,es,ing} recruit{,s,ing}_for "
    "replicat{e,es,ing} repeat{,s,ing} recreat{e,es,ing} run{,s} running operat{e,es,ing}",
    anchor=False,
)

_PERSON_NOUN = (
    "person people persons human humans individual individuals civilian{,s} victim{,s} "
    "pedestrian{,s} passenger{,s} crowd{,s} kid{,s} child children toddler{,s} baby babies "
    "infant{,s} teenager{,s} teen{,s} student{,s} classmate{,s} woman women girl{,s} boy{,s} "
    "man men elderly cop{,s} policeman policemen police_officer{,s} officer{,s} politician{,s} "
    "president senator{,s} judge{,s} journalist{,s} witness{,es} neighbo{r,rs,ur,urs} "
    "stranger{,s} hostage{,s} prisoner{,s} wife wives husband{,s} spouse{,s} partner{,s} "
    "girlfriend{,s} boyfriend{,s} ex ex-wife ex-husband ex_boyfriend ex_girlfriend boss{,es} "
    "coworker{,s} co-worker{,s} colleague{,s} friend{,s} family families mother{,s} mom{,s} "
    "mum{,s} father{,s} dad{,s} parent{,s} son{,s} daughter{,s} brother{,s} sister{,s} "
    "teacher{,s} roommate{,s} landlord{,s} tenant{,s} grandparent{,s} grandmother{,s} "
    "grandfather{,s} grandma grandpa uncle{,s} aunt{,s} cousin{,s} enemy enemies rival{,s} "
    "employee{,s} employer{,s} customer{,s} user{,s} cleaner{,s} babysitter{,s} nanny "
    "therapist{,s} doctor{,s} nurse{,s} worker{,s} minorit{y,ies} immigrant{,s} "
    "refugee{,s} protester{,s} voter{,s} official{,s} leader{,s} ceo celebrity celebrities "
    "mentee{,s} gardener{,s} roofer{,s} coach{,es} pupil{,s} competitor{,s}"
)
# People as targets (not anchors: "kill" or "stab" is the anchor).
_PERSON = _Words(
    "someone somebody anyone anybody everyone everybody others him her " + _PERSON_NOUN,
    anchor=False,
)
_RELATION = _Words(_PERSON_NOUN, anchor=False)
# A person object: "someone", "a person", "my ex's new boyfriend", "the most people".
_WHOM = (
    r"(?:(?:a|an|the|my|his|her|their|our|your|this|that|some|other|another|innocent|all)\b"
    rf"{_det(2)})?{_PERSON}"
)
# Someone else's: "someone's", "my wife's", "other people's", "his", "their".
_OTHERS = (
    r"(?:\b(?:someone|somebody|anyone|another\W+person|other\W+people|people|others|"
    r"someone\W+else|somebody\W+else|a\W+stranger|strangers)(?:'s|')"
    r"|\b(?:his|her|their)\b"
    rf"|\b(?:my|a|an|the|his|her|their|our|your)\W+(?:[\w-]+\W+)?{_RELATION}(?:'s|'))"
)
# Without a bare "his", "her" or "their" ("see her/his email address on the profile page").
_OTHERS_POSSESSIVE = (
    r"(?:\b(?:someone|somebody|anyone|another\W+person|other\W+people|people|others|"
    r"someone\W+else|somebody\W+else|a\W+stranger|strangers)(?:'s|')"
    rf"|\b(?:my|a|an|the|his|her|their|our|your)\W+(?:[\w-]+\W+)?{_RELATION}(?:'s|'))"
)
_OTHERS_ANCHORS = _RELATION.anchors() | set(
    _words_of("someone somebody anyone person people others else stranger strangers his her their")
)
# Objects the writer owns: "my account", "from me" (victims ask too) -- but not "my ex's".
_MINE = r"(?:my|our|me|us|mine|ours)\b(?!\W+[\w-]+'s\b)(?!\W+(?:ex|neighbou?r)\b)"

# ------------------------------------------------------------------------------------ rules

_BOMB = _Words(
    "bomb{,s} pipe_bomb{,s} car_bomb{,s} dirty_bomb{,s} nail_bomb{,s} letter_bomb{,s} "
    "explosive{,s} explosive_device{,s} ied{,s} grenade{,s} molotov{,s} molotov_cocktail{,s} "
    "landmine{,s} napalm thermite tnt semtex dynamite detonator{,s} nerve_agent{,s} nerve_gas "
    "sarin ricin anthrax mustard_gas chlorine_gas poison_gas toxic_gas chemical_weapon{,s} "
    "biological_weapon{,s} bioweapon{,s} bio-weapon{,s} nuclear_weapon{,s} nuclear_bomb{,s} "
    "nuke{,s} weapon{,s}_of_mass_destruction wmd{,s}"
)
_GUN = _Words(
    "gun{,s} firearm{,s} rifle{,s} pistol{,s} handgun{,s} shotgun{,s} weapon{,s} ammunition ammo "
    "silencer{,s} suppressor{,s}"
)
_GUN_ILLEGAL = (
    r"(?:untraceable|ghost|homemade|home-made|3d[\s-]printed|unregistered|illegal|unlicensed|"
    r"fully\W+automatic|sawed-off|sawn-off)"
)
_WEAPONS = [
    # make / get / set off a bomb, a nerve agent, a chemical weapon ...
    _rule(_BOMB, rf"{_PRODUCE}{_near(6)}{_BOMB}"),
    _rule(
        _BOMB,
        r"\b(?:recipe|instructions|blueprint|formula|steps|diagram|guide|tutorial|plans?)"
        rf"\W+(?:for|to|on|of)\b{_near(4)}{_BOMB}",
    ),
    _rule(
        _BOMB,
        rf"{_BOMB}{_near(5)}\b(?:synthesi[sz]ed|made|manufactured|built|assembled|detonated)\b",
    ),
    _rule(
        _BOMB,
        rf"\b(?:used|use|using|serve|serves|turned|turn|weaponi[sz]ed)\W+as\W+(?:an?\W+)?{_BOMB}",
    ),
    # illegal, untraceable or homemade firearms; getting them illegally; arming children
    _rule(
        _GUN,
        rf"\b3d[\s-]?print(?:s|ed|ing)?\W+(?:[\w']+\W+){{0,2}}?{_GUN}|{_GUN}{_near(3)}"
        r"(?:with|using|on)\W+(?:an?\W+)?3d\W+printer\b",
    ),
    _rule(_GUN, rf"\b{_GUN_ILLEGAL}{_det(1)}{_GUN}"),
    _rule(
        _GUN,
        rf"{_PRODUCE}{_near(4)}{_GUN}{_near(2)}\b(?:illegally|without\W+(?:a\W+)?"
        r"(?:licen[cs]e|background\W+check|permit|serial))",
    ),
    _rule(
        _GUN,
        r"\b(?:children|kids|minors|teenagers|a\W+child)\b"
        rf"{_near(4)}\b(?:access|use|using|fire|firing|buy|get)\b{_near(2)}{_GUN}",
    ),
]

_KILL = _Words(
    "kill{,s,ing} murder{,s,ing} assassinat{e,es,ing} execut{e,es,ing} slaughter{,s,ing} "
    "butcher{,s,ing} behead{,s,ing} decapitat{e,es,ing} stab{,s} stabbing shoot{,s,ing} "
    "strangl{e,es,ing} chok{e,es,ing} suffocat{e,es,ing} smother{,s,ing} drown{,s,ing} "
    "poison{,s,ing} tortur{e,es,ing} maim{,s,ing} mutilat{e,es,ing} dismember{,s,ing} "
    "kidnap{,s} kidnapping abduct{,s,ing} beat{,s}_up beating_up beat{,s} beating "
    "assault{,s,ing} attack{,s,ing} hurt{,s,ing} harm{,s,ing} injur{e,es,ing} punch{,es,ing} "
    "hit{,s} hitting burn{,s,ing} lynch{,es,ing} "
    "rap{e,es,ing} molest{,s,ing} enslav{e,es,ing} terminat{e,es,ing} eliminat{e,es,ing} "
    "eradicat{e,es,ing} exterminat{e,es,ing} annihilat{e,es,ing} wip{e,es,ing}_out "
    "get{,s}_rid_of getting_rid_of do{,es}_away_with doing_away_with crush{,es,ing} "
    "smash{,es,ing} gut{,s} gutting chop{,s}_up chopping_up cut{,s,ting}_off "
    "shatter{,s,ing} bludgeon{,s,ing} paralyz{e,es,ing} disfigur{e,es,ing} "
    "throttl{e,es,ing} overpower{,s,ing} tackl{e,es,ing} pierc{e,es,ing} slash{,es,ing} "
    "hunt{,s,ing}_down snipe{,s} sniping knock{,s,ing}_out incapacitat{e,es,ing} "
    "kneecap{,s} kneecapping slay{,s,ing} captur{e,es,ing} euthani{ze,zes,zing,se,ses,sing}"
)
_BODY_PART = (
    r"(?:skull|head|face|neck|throat|spine|sternum|legs?|arms?|kidneys?|ribs?|teeth|jaw|knees?|"
    r"eyes?|artery|family|life|body|hands?|fingers?)"
)
_PLACE = _Words(
    "house{,s} home{,s} building{,s} school{,s} hospital{,s} church{,es} mosque{,s} "
    "synagogue{,s} temple{,s} stadium{,s} concert{,s} airport{,s} plane{,s} airplane{,s} "
    "aircraft train{,s} subway bus{,es} car{,s} crowd{,s} crowded_area{,s} city cities town{,s} "
    "village{,s} power_grid{,s} water_supply reservoir{,s} bridge{,s} embassy embassies "
    "office{,s} police_station{,s} mall{,s} market{,s} festival{,s} parade{,s} "
    "nuclear_plant{,s} power_plant{,s} pipeline{,s} railway{,s} courthouse{,s} motorbike{,s} "
    "motorcycle{,s} neighbourhood neighborhood apartment{,s} vehicle{,s} nightclub{,s} "
    "university universities classroom{,s} dorm{,s} army_base{,s} military_base{,s}",
    anchor=False,
)
_DESTROY = _Words(
    "bomb{,s,ing} blow{,s,ing}_up firebomb{,s,ing} torch{,es,ing} burn{,s,ing}_down "
    "set{,s,ting}_fire_to attack{,s,ing} derail{,s,ing} sabotag{e,es,ing} obliterat{e,es,ing} "
    "nuk{e,es,ing} raz{e,es,ing} shoot{,s,ing}_up"
)
_ATROCITY = _Words(
    "murder{,s} massacre{,s} genocide homicide assassination{,s} terrorist_attack{,s} "
    "terror_attack{,s} bombing{,s} mass_shooting{,s} school_shooting{,s} shooting{,s} "
    "stabbing{,s} kidnapping{,s} hijacking{,s} arson hate_crime{,s} ethnic_cleansing "
    "lynching{,s} rape sexual_assault violent_assault armed_robbery assault{,s} "
    "violent_crime{,s} act{,s}_of_terror{,ism} act{,s}_of_violence torture hit-and-run "
    "hit_and_run drive-by drive-by_shooting terrorism terrorist_plot{,s} killing{,s} "
    "eco-terrorism attack{,s}_on death{,s} stadium_explosion"
)
_VIOLENCE_WORD = _Words(
    "violence violent war killing{,s} murder{,s} genocide terrorism terrorist{,s} "
    "mass_shooting{,s} gun_violence gang_violence riot{,s} assault rape sexual_assault torture "
    "criminal_behavior criminal_behaviour bloodshed massacre{,s} war_crimes physical_harm "
    "violent_rhetoric extremism radicali{zation,sation} reckless_driving dangerous_driving "
    "drunk_driving street_racing animal_cruelty"
)
_SABOTAGE = _Words(
    "sabotag{e,es,ing} disrupt{,s,ing} interfer{e,es,ing}_with derail{,s,ing} "
    "shut{,s,ting}_down crippl{e,es,ing} poison{,s,ing} contaminat{e,es,ing} "
    "tamper{,s,ing}_with attack{,s,ing} destroy{,s,ing} black{,s,ing}_out"
)
_INFRASTRUCTURE = _Words(
    "transportation transportation_system{,s} transport_system{,s} railway{,s} railroad{,s} "
    "airport{,s} power_grid{,s} electrical_grid{,s} grid water_supply water_supplies "
    "water_treatment reservoir{,s} infrastructure traffic_lights traffic_system{,s} "
    "air_traffic public_order emergency_services dam{,s} subway metro power_plant{,s} "
    "pipeline{,s}",
    anchor=False,
)
_FOOD = r"(?:food|drinks?|water|coffee|tea|meals?|medications?|medicine|wine|beer|cup|glass)"
_VIOLENCE = [
    _rule(_KILL, rf"{_KILL}{_near(0)}{_WHOM}\b"),
    _rule(_KILL, rf"{_KILL}{_near(0)}(?:{_OTHERS}){_near(1)}\b{_BODY_PART}\b"),
    _rule(_KILL, rf"{_KILL}\W+(?:in\W+)?(?:a|an|the)\W+(?:[\w']+\W+)?(?:human|person)(?:'s)?\b"),
    _rule(
        "smash smashes smashing bash bashing cave crack cracking break breaking hammer "
        "hammering rip ripping tear tearing cut cutting chop chopping slit slice stomp kick "
        "kicking gouge gouging",
        r"\b(?:smash|smashes|smashing|bash|bashing|cave|crack|cracking|break|breaking|hammer|"
        r"hammering|rip|ripping|tear|tearing|cut|cutting|chop|chopping|slit|slice|stomp|kick|"
        r"kicking|gouge|gouging)\W+(?:(?:in|open|off|out)\W+)?(?:"
        rf"{_OTHERS}|(?:a|an|the)\W+(?:[\w']+\W+)?(?:human|person)(?:'s)?)\W+(?:[\w']+\W+)?"
        rf"{_BODY_PART}\b",
    ),
    _rule(
        "explode blow catch burn",
        rf"\bmake\W+(?:{_OTHERS})\W+(?:[\w']+\W+)?(?:car|house|home|phone|bike|motorbike|"
        r"office|shop)\W+(?:explode|blow\W+up|catch\W+fire|burn)\b",
    ),
    _rule(
        "push pushes pushing shove shoves shoving throw throws throwing",
        r"\b(?:push|pushes|pushing|shove|shoves|shoving|throw|throws|throwing)\W+"
        rf"{_WHOM}\W+(?:off|down|out\W+of|in\W+front\W+of|under|into)\b",
    ),
    _rule(_DESTROY, rf"{_DESTROY}{_det(3)}{_PLACE}"),
    _rule(
        "fire",
        r"\bset(?:s|ting)?\W+(?:a|an|the|someone's|somebody's|his|her|their|\w+'s)\W+"
        rf"(?:[\w-]+\W+)?{_PLACE}\W+on\W+fire\b",
    ),
    _rule(_ATROCITY, rf"{_COMMIT}(?:\W+(?:for|of))?{_det(3)}{_ATROCITY}"),
    _rule(_VIOLENCE_WORD, rf"{_PROMOTE}{_near(6)}{_VIOLENCE_WORD}"),
    _rule(_SABOTAGE, rf"{_SABOTAGE}{_near(5)}{_INFRASTRUCTURE}"),
    _rule(
        "poison poisoning poisons lace lacing spike spiking contaminate contaminating "
        "tamper tampering",
        r"\b(?:poison|poisoning|poisons|lace|lacing|spike|spiking|contaminate|contaminating|"
        rf"tamper\W+with|tampering\W+with)\b{_near(0)}{_OTHERS}{_near(1)}\b{_FOOD}\b",
    ),
    _rule(
        "harm injury injuries pain damage",
        r"\b(?:cause|causing|causes|inflict|inflicting|do|doing)\W+(?:[\w']+\W+)?"
        rf"(?:harm|injury|injuries|pain|damage)\W+to\W+{_WHOM}",
    ),
    _rule("threat threaten threatens threatening", rf"\bthreat(?:en|ens|ening)?\W+to\W+{_KILL}"),
    _rule("threaten threatens threatening", rf"\bthreaten(?:s|ing)?\W+{_WHOM}"),
    _rule(
        "leaving",
        r"\b(?:without|not)\W+leaving\W+(?:any\W+)?(?:evidence|a\W+trace|traces?|marks?|"
        r"fingerprints|witnesses)\b",
    ),
    _rule(
        "accident suicide natural self",
        r"\bmake\W+it\W+(?:look|seem|appear)\W+like\W+(?:an?\W+)?(?:accident|suicide|"
        r"natural\W+causes?|self-defen[cs]e)\b",
    ),
    _rule(
        "terrorist terror extremist jihadist",
        r"\b(?:terrorist|terror|extremist|jihadist)\W+(?:organi[sz]ation|group|cell|network)\b"
        rf"{_near(4)}\b(?:infiltrat\w*|attack\w*|recruit\w*|plan\w*|bomb\w*|fund\w*|financ\w*)",
    ),
    _rule(
        "violence attack attacks harm aggression",
        r"\b(?:violence|attacks?|harm|aggression)\W+(?:against|towards?|on)\W+(?:[\w']+\W+){0,3}?"
        rf"{_PERSON}",
    ),
    _rule(
        "hostage hostages",
        r"\b(?:take|taking|hold|holding)\W+(?:[\w']+\W+){0,3}?hostages?\b",
    ),
    _rule(
        "body bodies corpse corpses remains",
        r"\b(?:dispose|disposing|get\W+rid|getting\W+rid|hide|hiding|bury|burying|dissolve|"
        r"dissolving|dismember|dismembering|chop\W+up|chopping\W+up|saw|sawing)\b"
        rf"{_near(2)}\b(?:dead\W+(?:[\w']+\W+)?)?(?:body|bodies|corpses?|remains)\b",
    ),
    _rule(
        "dead",
        rf"\b(?:dispose|disposing)\W+of\W+(?:a|the|my|his|her|their)\W+dead\W+{_RELATION}",
    ),
    _rule(
        "abduction kidnapping torture murder rape assault execution assassination",
        r"\b(?:abduction|kidnapping|torture|murder|rape|assault|execution|assassination)\W+"
        rf"(?:and\W+\w+\W+)?of\W+(?:a|an|the)?\W*(?:[\w']+\W+)?{_PERSON}",
    ),
    _rule(
        "torture torturing tortures abuse abusing abuses mutilate mutilating maim maiming harm "
        "harming hurt hurting kill killing",
        r"\b(?:torture|torturing|tortures|abuse|abusing|abuses|mutilate|mutilating|maim|maiming)"
        r"\W+(?:[\w']+\W+)?(?:animals|pets|dogs?|cats?|puppies|kittens|horses?)\b"
        r"|\b(?:harm|harming|hurt|hurting|kill|killing|torture|torturing)\W+(?:[\w']+\W+)?"
        r"(?:animals|pets|dogs|cats)\W+for\W+(?:fun|sport|pleasure|entertainment|kicks)\b",
    ),
    _rule(
        "hijack hijacks hijacking",
        r"\bhijack(?:s|ing)?\b(?:\W+\w+){0,3}?\W+(?:plane|aircraft|airplane|car|cars|vehicle|bus|"
        r"train|ship|flight|self-driving)\b",
    ),
]

_SUICIDE = _Words(
    "suicide self-harm self_harm selfharm self-injury self_injury self-mutilation "
    "cutting_myself cutting_yourself anorexia bulimia eating_disorder{,s} starvation pro-ana "
    "thinspiration "
    "dangerous_dieting"
)
_BODY = (
    r"(?:wrists?|arms?|veins?|artery|arteries|cervical\W+artery|throat|skin|thighs?|legs?|"
    r"stomach|neck)"
)
_REFLEXIVE = "myself yourself yourselves oneself"
_SELF_HARM = [
    _rule("suicide", r"\b(?:commit|commits|committing|attempt|attempts|attempting)\W+suicide\b"),
    _rule(
        _REFLEXIVE,
        r"\b(?:kill|killing|kills|hang|hanging|drown|drowning|harm|harming|hurt|hurting|cut|"
        r"cutting|starve|starving|poison|poisoning|overdose|overdosing|shoot|shooting|burn|"
        r"burning|suffocate|suffocating|electrocute|electrocuting)\W+"
        r"(?:myself|yourself|yourselves|oneself)\b",
    ),
    _rule(
        "life",
        r"\b(?:end|ending|take|taking)\W+(?:my|your|their|his|her|one's)\W+(?:own\W+)?life\b",
    ),
    _rule(_SUICIDE, rf"{_PROMOTE}{_near(8)}{_SUICIDE}"),
    _rule(
        "starve kill hurt harm cut burn hang drown",
        rf"{_PROMOTE}{_near(4)}\b(?:starve|kill|hurt|harm|cut|burn|hang|drown)\W+"
        r"(?:themselves|himself|herself|yourself|yourselves|myself)\b",
    ),
    _rule(
        "cut cutting slit slitting slash slashing sever severing pierce piercing carve carving "
        "burn burning stab stabbing",
        r"\b(?:cut|cutting|slit|slitting|slash|slashing|sever|severing|pierce|piercing|carve|"
        r"carving|burn|burning|stab|stabbing)\W+(?:[\w']+\W+){0,2}?(?:into\W+)?(?:my|your|one's)"
        rf"\W+(?:own\W+)?{_BODY}\b",
    ),
    _rule(
        "suicide harm",
        r"\b(?:suicide|self-harm|self\W+harm)\W+(?:methods?|techniques?|instructions|guide|tips)\b",
    ),
    _rule("dose", r"\b(?:lethal|fatal)\W+dose\b"),
    _rule(
        "suicide harm injury cutting",
        r"\b(?:instructions|guide|tutorial|tips|methods?|ways?|steps|how\W+to\W+(?:perform|do|"
        r"practi[cs]e|commit|start|engage\W+in))\W+(?:for|on|to|of)?\W*(?:[\w']+\W+)?"
        r"(?:suicide|self[\s-]?harm|self[\s-]?injury|cutting\W+(?:myself|yourself|oneself))\b"
        r"(?!\W+(?:prevention|awareness|hotlines?|support|risk|survivors?|help|crisis))"
        r"|\bperform(?:s|ing)?\W+(?:suicide|self[\s-]?harm|self[\s-]?injury)\b",
    ),
    _rule("end ending", r"\b(?:end|ending)\W+it\W+all\b"),
]

_MALWARE = _Words(
    "malware virus viruses computer_virus ransomware trojan{,s} keylogger{,s} spyware "
    "rootkit{,s} botnet{,s} backdoor{,s} ddos_attack{,s} denial-of-service_attack{,s} "
    "denial_of_service_attack{,s} cryptojacker{,s} logic_bomb{,s} malicious_code "
    "malicious_software adware stalkerware exploit_kit{,s} zero-day_exploit{,s} "
    "cyber_attack{,s} cyberattack{,s} cyber-attack{,s} phishing_attack{,s} ddos "
    "denial_of_service denial-of-service "
    "sql_injection_attack{,s} hacking_tool{,s}",
    guard=_DEFENSIVE,
)
_SYSTEM = _Words(
    "computer{,s} network{,s} database{,s} server{,s} system{,s} website{,s} web_site{,s} "
    "site{,s} account{,s} email{,s} e-mail{,s} inbox phone{,s} device{,s} webcam{,s} camera{,s} "
    "wifi wi-fi router{,s} iot smart_home car{,s} vehicle{,s} drone{,s} grid voting election{,s} "
    "infrastructure atm{,s} point-of-sale cloud app{,s} machine{,s} mainframe{,s} "
    "control_system{,s} mind{,s} social_media profile{,s} bank{,s} pacemaker{,s} records",
    anchor=False,
)
_SECURITY = (
    r"(?:security|security\W+measures|security\W+systems?|antivirus|anti-virus|"
    r"(?:anti-?virus|security)\W+software|firewalls?|authentication|two-factor|2fa|captchas?|drm|"
    r"digital\W+rights\W+management|copy\W+protection|encryption|password\W+protection|"
    r"intrusion\W+detection|spam\W+filters?|content\W+filters?|paywalls?|license\W+checks?)"
)
_CYBERATTACK = [
    _rule(
        "hack hacks hacking break breaks breaking sneak sneaking",
        r"\b(?:hack|hacks|hacking|break|breaks|breaking|sneak|sneaking)\W+into\W+"
        rf"(?!{_MINE})(?:[\w'-]+\W+){{0,4}}?{_SYSTEM}",
    ),
    _rule("hack hacks hacking", rf"\b(?:hack|hacks|hacking)\W+into\b(?!\W+{_MINE})"),
    _rule(
        "hack hacks hacking hijack hijacks hijacking compromise compromises compromising "
        "infect infects infecting breach breaches breaching crash crashes crashing control",
        r"\b(?:hack|hacks|hacking|hijack|hijacks|hijacking|compromise|compromises|compromising|"
        r"infect|infects|infecting|breach|breaches|breaching|crash|crashes|crashing|"
        r"take\W+control\W+of|"
        rf"taking\W+control\W+of)\W+(?!{_MINE})(?:[\w'-]+\W+){{0,3}}?{_SYSTEM}",
    ),
    _rule(_MALWARE, rf"{_CRAFT}{_near(4)}{_MALWARE}"),
    _rule(
        "crack cracks cracking brute forcing steal steals stealing harvest harvests harvesting "
        "phish phishing dump dumping sniff sniffing",
        r"\b(?:crack|cracks|cracking|brute[\s-]?forc(?:e|es|ing)|steal|steals|stealing|harvest|"
        r"harvests|harvesting|phish|phishing|dump|dumping|sniff|sniffing)\W+"
        rf"(?!{_MINE})(?:[\w']+\W+){{0,2}}?(?:passwords?|credentials|logins?|pins?|"
        r"password\W+hashes|hashes)\b",
    ),
    _rule(
        "exploit exploits exploiting",
        r"\bexploit(?:s|ing)?\W+(?:[\w']+\W+){0,3}?(?:vulnerabilit(?:y|ies)|security\W+(?:flaws?|"
        r"holes?|bugs?)|zero-days?|bugs?|weakness(?:es)?)\b",
    ),
    _rule(
        "bypass bypasses bypassing circumvent circumvents circumventing evade evades evading "
        "defeat defeats defeating around break breaking crack cracking",
        r"\b(?:bypass|bypasses|bypassing|circumvent|circumvents|circumventing|evade|evades|"
        r"evading|defeat|defeats|defeating|get\W+around|getting\W+around|break|breaking|crack|"
        rf"cracking)\W+(?:[\w']+\W+){{0,2}}?{_SECURITY}\b",
    ),
    _rule(
        "unauthorized unauthorised",
        r"\b(?:gain|gains|gaining|get|gets|getting|obtain|obtaining)\W+unauthori[sz]ed\W+access\b",
    ),
    _rule(_MALWARE, rf"{_COMMIT}{_near(3)}{_MALWARE}"),
    _rule(
        "engineering",
        r"\bsocial\W+engineering\W+(?:tactics|techniques|attacks?|scams?)\b",
    ),
]

_FRAUD_CRIME = _Words(
    "fraud identity_theft identity_fraud tax_fraud insurance_fraud mail_fraud wire_fraud "
    "credit_card_fraud bank_fraud bank_account_fraud securities_fraud benefits_fraud "
    "welfare_fraud voter_fraud election_fraud insider_trading money_laundering embezzlement "
    "forgery extortion bribery scam{,s} ponzi_scheme{,s} pyramid_scheme{,s} tax_evasion "
    "counterfeiting plagiarism perjury treason"
)
# "fraud" is a victim's word too: "a fraud check", "fraud protection", "fraud victims".
_NOT_THE_CRIME = (
    r"(?!\W+(?:check|checks|detection|prevention|alerts?|department|team|protection|reports?|"
    r"claims?|investigations?|cases?|warnings?|awareness|victims?|insurance|risk|analysts?|"
    r"analysis|monitoring|unit|hotline|line|number|call|calls|emails?|texts?|messages?|"
    r"reporting|specialists?|laws?|charges?)\b)"
)
_PRIVATE_DATA = _Words(
    "identity identities credit_card_information credit_card_info credit_card_details "
    "credit_card_number{,s} credit_card_data credit_cards card_details card_number{,s} "
    "card_information bank_account_details bank_details bank_account_information "
    "personal_information personal_info personal_data personal_details "
    "social_security_number{,s} login_credentials credentials passwords password "
    "sensitive_information sensitive_data confidential_information confidential_data "
    "private_information private_data financial_information user_data customer_data "
    "trade_secrets medical_records"
)
_FAKE_DOC = (
    r"(?:money|bills|currency|cash|banknotes|bank\W+notes|goods|products|ids?|id\W+cards?|"
    r"passports?|driver'?s\W+licen[cs]es?|driving\W+licen[cs]es?|documents?|checks?|cheques?|"
    r"diplomas?|degrees?|certificates?|prescriptions?|receipts?|coupons?|tickets?|visas?|"
    r"social\W+security\W+cards?|identit(?:y|ies)|reviews?|signatures?|invoices?|"
    r"news|charity|charities|websites?|online\W+stores?|stores?|notes?|sick\W+notes?|"
    r"bank\W+websites?|login\W+pages?)"
)
_FORGE = _Words(
    "make{,s} making creat{e,es,ing} produc{e,es,ing} print{,s,ing} manufactur{e,es,ing} "
    "forg{e,es,ing} distribut{e,es,ing} sell{,s,ing} pass{,es,ing} spend{,s,ing} use{,s} using "
    "design{,s,ing} generat{e,es,ing} writ{e,es,ing} post{,s,ing} set{,s}_up setting_up "
    "build{,s,ing} develop{,s,ing}",
    anchor=False,
)
_FAKE = _Words("counterfeit fake forged fraudulent fictitious bogus phony phoney", guard=_DEFENSIVE)
_FRAUD = [
    _rule(_FRAUD_CRIME, rf"{_COMMIT}{_near(2)}{_FRAUD_CRIME}{_NOT_THE_CRIME}"),
    _rule(
        "steal steals stealing clone clones cloning skim skims skimming harvest harvests "
        "harvesting phish phishing",
        r"\b(?:steal|steals|stealing|clone|clones|cloning|skim|skims|skimming|harvest|harvests|"
        rf"harvesting|phish|phishing)\W+(?!{_MINE})(?:[\w'-]+\W+){{0,3}}?{_PRIVATE_DATA}",
    ),
    _rule(
        _PRIVATE_DATA,
        also=_OTHERS_ANCHORS | {"stolen"},
        pattern=r"\b(?:take|taking|use|using|uses|obtain|obtaining|get|getting|acquire|acquiring|buy|"
        r"buying|sell|selling|find|finding|access|accessing|collect|collecting)\W+"
        rf"(?:[\w'-]+\W+){{0,2}}?(?:{_OTHERS}|stolen)\W+(?:[\w']+\W+){{0,2}}?{_PRIVATE_DATA}",
    ),
    _rule("fraudulent", rf"\b(?:use|using|uses)\b{_near(5)}\bfor\W+fraudulent\b"),
    _rule(_FAKE, rf"{_FORGE}{_near(3)}{_FAKE}{_det(1)}{_FAKE_DOC}\b{_DEFENSIVE}"),
    _rule(
        "counterfeiting",
        r"\bcounterfeiting\W+(?:money|bills|currency|cash|goods|products|banknotes|notes|items)\b",
    ),
    _rule(
        "review reviews",
        r"\b(?:write|writes|writing|post|posting|posts|create|creates|creating|generate|"
        r"generating|automate|automates|automating|buy|buying)\W+(?:[\w']+\W+){0,4}?(?:fake|false|"
        r"fraudulent|paid)\W+(?:[\w']+\W+)?reviews?\b",
    ),
    _rule("review", rf"\breview\b{_near(6)}\b(?:not|never)\W+(?:even\W+)?(?:used|tried|tested)\b"),
    _rule(
        "manipulate manipulates manipulating rig rigs rigging",
        r"\b(?:manipulate|manipulates|manipulating|rig|rigs|rigging)\W+(?:the\W+)?(?:[\w']+\W+)?"
        r"(?:stock\W+prices?|stocks?|stock\W+markets?|financial\W+markets?|markets?|"
        r"share\W+prices?|(?:cryptocurrency|crypto)\W+prices?|exchange\W+rates?|prices?|"
        r"customer\W+ratings|ratings|reviews|financial\W+data)\b",
    ),
    _rule(
        "falsify falsifies falsifying forge forges forging fake fakes faking tamper tampers "
        "tampering",
        r"\b(?:falsify|falsifies|falsifying|forge|forges|forging|fake|fakes|faking|"
        r"(?:tamper|tampers|tampering)\W+with)\W+(?:[\w']+\W+){0,2}?(?:records?|documents?|signatures?|"
        r"test\W+results|results|data|invoices?|receipts?|checks?|cheques?|tax\W+returns?|"
        r"transcripts?|financial\W+statements?|evidence|books|accounts)\b",
    ),
    _rule(
        "evade evades evading dodge dodges dodging cheat cheats cheating",
        r"\b(?:evade|evades|evading|dodge|dodges|dodging|cheat|cheats|cheating)\W+(?:on\W+)?"
        r"(?:[\w']+\W+)?(?:taxes|tax|the\W+irs|customs\W+duties)\b",
    ),
    _rule(
        "illegally",
        r"\b(?:avoid|avoids|avoiding|not)\W+pay(?:ing)?\W+(?:[\w']+\W+)?tax(?:es)?\W+illegally\b",
    ),
    _rule(
        "scam scamming swindle swindles swindling defraud defrauds defrauding dupe dupes duping "
        "fleece fleecing extort extorts extorting blackmail blackmails blackmailing",
        r"\b(?:scam|scamming|swindle|swindles|swindling|defraud|defrauds|defrauding|dupe|dupes|"
        r"duping|fleece|fleecing|extort|extorts|extorting|blackmail|blackmails|blackmailing)\W+"
        rf"(?!{_MINE})(?:(?:the|some|other|vulnerable|innocent|unsuspecting|elderly|old)\W+)*"
        rf"(?:{_PERSON}|money|businesses|companies)\b",
    ),
    _rule(
        "manipulate manipulates manipulating trick tricks tricking coerce coerces coercing "
        "deceive deceives deceiving lure lures luring",
        r"\b(?:manipulate|manipulates|manipulating|trick|tricks|tricking|coerce|coerces|coercing|"
        r"deceive|deceives|deceiving|lure|lures|luring)\W+(?:[\w']+\W+){0,3}?"
        rf"{_PERSON}\W+(?:into|to)\b",
    ),
    _rule(
        "manipulate manipulates manipulating",
        r"\b(?:manipulate|manipulates|manipulating)\W+(?:[\w']+\W+)?people\b",
    ),
    _rule(
        "exploit exploits exploiting prey preys preying exploitation",
        r"\b(?:exploit|exploits|exploiting|prey\W+on|preys\W+on|preying\W+on)\W+(?:the\W+)?"
        r"(?:vulnerable|elderly|lonely|desperate|grieving|poor)\W+(?:[\w']+\W+)?(?:people|"
        r"individuals|populations?|groups?|users|adults|persons|customers|victims|seniors)\b"
        r"|\bexploits?\W+their\W+(?:insecurities|fears|vulnerabilit(?:y|ies)|loneliness|grief|"
        r"trust)\b|\btargets?\W+vulnerable\W+[\w']+\W+for\W+exploitation\b",
    ),
    _rule(
        "phishing scam scams ponzi pyramid",
        rf"{_CRAFT}{_near(4)}\b(?:phishing|scam|scams|ponzi|pyramid\W+scheme)\b"
        r"(?!\W+(?:calls?|emails?|texts?|messages?)\W+(?:i|we)\W)",
    ),
    _rule(
        "phishing",
        r"\bphishing\W+(?:emails?|sites?|websites?|pages?|attacks?|scams?|campaigns?|kits?|"
        rf"links?|messages?|texts?)\b{_near(6)}\b(?:trick\w*|steal\w*|obtain\w*|harvest\w*|"
        r"collect\w*|lure\w*|reveal\w*|giv\w*)",
    ),
    _rule(
        "cheat cheats cheating",
        r"\b(?:cheat|cheats|cheating)\W+(?:on|in|at|during)\W+(?:[\w']+\W+){0,3}?(?:exams?|tests?|"
        r"quiz|quizzes|finals|assignments?|homework|essays?|the\W+sat|certifications?)\b",
    ),
    _rule(
        "launder launders laundering",
        r"\b(?:launder|launders|laundering)\W+(?:[\w']+\W+)?(?:money|cash|funds|proceeds|profits)\b",
    ),
    _rule(
        "bribe bribes bribing",
        r"\b(?:bribe|bribes|bribing)\W+(?:a|an|the)?\W*(?:[\w']+\W+)?(?:officials?|judges?|police|"
        r"officers?|cops?|politicians?|inspectors?|customs|witness|witnesses)\b",
    ),
    _rule(
        "stolen",
        r"\b(?:use|using|uses|buy|buying|sell|selling|with)\W+(?:[\w']+\W+)?stolen\W+(?:[\w']+\W+)?"
        r"(?:identit(?:y|ies)|credit\W+cards?|personal\W+information|card\W+details|credentials)\b",
    ),
]

_THEFT_VERB = _Words(
    "steal{,s,ing} shoplift{,s,ing} burglari{ze,zes,zing,se,ses,sing} looting "
    "pickpocket{,s,ing} embezzl{e,es,ing} hotwir{e,es,ing} hot-wir{e,es,ing} carjack{,s,ing}"
)
# "a thief who steals", "could someone steal it?": descriptions and worries, not requests.
_THIRD_PARTY = "".join(
    rf"(?<!\b{word}\s)"
    for word in _words_of("who someone somebody anyone they hackers thieves criminals scammers")
)
# Figurative objects: "steal the show", "steal someone's heart", "steal a base".
_FIGURATIVE = (
    r"(?:show|spotlight|limelight|heart|hearts|base|bases|glance|glances|kiss|kisses|look|"
    r"march|scene|thunder|moment|attention|focus|breath|sleep|nap)\b"
)
_CRIME = [
    _rule(
        _THEFT_VERB,
        rf"{_THIRD_PARTY}{_THEFT_VERB}(?!\W+(?:(?:a|an|the|someone's|somebody's|his|her|their|\w+'s)\W+)?"
        rf"{_FIGURATIVE})(?![^.?!]{{0,25}}\b(?:from\W+)?{_MINE})\W+\w",
    ),
    _rule(
        "break breaks breaking",
        r"\b(?:break|breaks|breaking)\W+into\W+(?:a|an|the|someone's|somebody's|his|her|their|"
        r"my\W+\w+'s|\w+'s)\W+(?:[\w-]+\W+)?(?:house|home|car|apartment|flat|building|store|shop|"
        r"vault|bank\W+vault|safe|office|garage|warehouse|museum|school|church|property)\b",
    ),
    _rule(
        "alarm alarms alarm cctv cameras camera monitor monitors",
        r"\b(?:disable|disables|disabling|bypass|bypasses|bypassing|defeat|defeating|deactivate|"
        r"deactivating|cut|cutting|get\W+past|getting\W+past)\W+(?:the\W+|a\W+)?(?:alarms?|"
        r"alarm\W+systems?|security\W+cameras?|cctv|surveillance\W+cameras?|ankle\W+monitors?)"
        r"\W+(?:in|of|at|on)\W+(?:a|an|the)\W+(?:[\w']+\W+)?(?:bank|vault|store|shop|house|home|"
        r"museum|jewell?e?ry|building|office|warehouse)\b",
    ),
    _rule(
        "caught detected arrested traced",
        r"\b(?:without|not)\W+(?:getting|being|get|be)\W+(?:caught|detected|arrested|traced)\b",
    ),
    _rule(
        "detection caught police enforcement authorities cops arrest prosecution capture",
        r"\b(?:avoid|avoids|avoiding|evade|evades|evading|escape|escapes|escaping|elude|eluding|"
        r"outrun|outrunning)\W+(?:[\w']+\W+)?(?:detection|getting\W+caught|being\W+caught|"
        r"the\W+police|police|law\W+enforcement|authorities|the\W+cops|cops|arrest|prosecution|"
        r"capture)\b",
    ),
    _rule("away", r"\bget(?:s|ting)?\W+away\W+with\W+(?:it|this|that|murder|\w+ing)\b"),
    _rule(
        "prison jail correctional custody detention",
        r"\b(?:escape|escapes|escaping|break|breaking|breaks)\W+(?:out\W+)?(?:of|from)\W+"
        r"(?:a\W+|the\W+)?(?:[\w']+\W+)?(?:prison|jail|correctional\W+facility|custody|detention)\b",
    ),
    _rule(
        "vandalize vandalizes vandalizing vandalise vandalises vandalising deface defaces defacing",
        r"\b(?:vandali[sz]e|vandali[sz]es|vandali[sz]ing|deface|defaces|defacing)\b",
    ),
    _rule(
        "slash slashing puncture puncturing key keying scratch scratching damage damaging "
        "wreck wrecking smash smashing destroy destroying sabotage sabotaging trash trashing "
        "demolish demolishing vandalize vandalise",
        r"\b(?:slash|slashing|puncture|puncturing|key|keying|scratch|scratching|damage|damaging|"
        r"wreck|wrecking|smash|smashing|destroy|destroying|sabotage|sabotaging|trash|trashing|"
        r"demolish|demolishing|vandalize|vandalise)"
        rf"\W+{_OTHERS}\W+(?:[\w']+\W+)?(?:tires|tyres|car|cars|motorbike|motorcycle|house|"
        r"property|windows|bike|life|lives|business)\b",
    ),
    _rule("smuggle smuggles smuggling", r"\b(?:smuggle|smuggles|smuggling)\W+\w"),
    _rule(
        "traffic trafficking",
        r"\b(?:traffic|trafficking)\W+(?:in\W+)?(?:[\w']+\W+)?(?:people|humans|women|children|girls|"
        r"boys|kids|migrants|organs|drugs|weapons|guns|arms|endangered\W+species|animals|"
        r"wildlife|ivory)\b",
    ),
    _rule("trafficking", rf"{_COMMIT}{_near(3)}trafficking\b"),
    _rule(
        "pirate pirates pirating bootleg bootlegging",
        r"\b(?:pirate|pirates|pirating|bootleg|bootlegging)\W+(?:[\w']+\W+)?(?:software|movies?|"
        r"films?|music|games?|content|copies|books?|episodes?)\b",
    ),
    _rule(
        "pirated cracked bootleg bootlegged copyrighted",
        r"\b(?:host|hosts|hosting|distribute|distributes|distributing|share|shares|sharing|sell|"
        r"sells|selling|download|downloads|downloading)\W+(?:[\w']+\W+)?(?:pirated|cracked|"
        r"bootleg(?:ged)?|copyrighted)\W+(?:[\w']+\W+)?(?:content|material|software|movies?|films?|"
        r"music|games?|books?)\b",
    ),
    _rule(
        "illegally",
        r"\billegally\W+(?:download|downloads|downloading|stream|streaming|share|sharing|copy|"
        r"copying|distribute|distributing|obtain|obtaining|acquire|buy|get|use|sell|possess|"
        r"access|accesses|accessing|enter|entering)\b",
    ),
    _rule(
        "pick picks picking lockpicking",
        r"(?:\b(?:pick|picks|picking)\W+(?:a|the)\W+(?:[\w']+\W+)?locks?\b|\block[\s-]?picking\b)"
        r"(?![^.?!]{0,30}\b(?:my|our)\W+own\b)",
    ),
    _rule(
        "airport checkpoint checkpoints border customs tsa immigration",
        r"\b(?:evade|evades|evading|bypass|bypasses|bypassing|sneak|sneaking|get\W+past|"
        r"getting\W+past|slip\W+past)\W+(?:past\W+|through\W+)?(?:[\w']+\W+)?(?:airport\W+security|"
        r"security\W+checkpoints?|border\W+(?:control|patrol|security|guards)|customs|tsa|"
        r"immigration\W+control)\b",
    ),
    _rule(
        "infiltrate infiltrates infiltrating",
        r"\binfiltrat(?:e|es|ing)\W+(?:[\w']+\W+){0,2}?(?:secure|government|military|facility|"
        r"agency|agencies|base|police|organi[sz]ation|company|compound|building)\b",
    ),
    _rule(
        "rob robs robbing",
        r"\b(?:rob|robs|robbing)\W+(?:a|the)\W+(?:[\w']+\W+)?(?:bank|store|shop|casino|house|train|"
        r"jewell?e?ry|gas\W+station|atm|armou?red)\b",
    ),
    _rule(
        "crime crimes",
        r"\b(?:commit|commits|committing|encourage|encourages|encouraging|promote|promotes|"
        r"promoting)\W+(?:[\w']+\W+)?crimes?\b",
    ),
    _rule("steal steals stealing", rf"\bsteal(?:s|ing)?\W+from\b(?!\W+{_MINE})"),
    _rule(
        "conceal conceals concealing hide hides hiding destroy destroys destroying launder",
        r"\b(?:conceal|conceals|concealing|hide|hides|hiding|destroy|destroys|destroying)\W+"
        r"(?:[\w']+\W+)?(?:criminal|illegal|illicit)\W+(?:activit(?:y|ies)|proceeds|income|"
        r"funds|money|evidence)\b|\b(?:destroy|destroys|destroying|hide|hiding|tamper\W+with|"
        r"tampering\W+with|plant|planting)\W+(?:the\W+)?evidence\b",
    ),
    _rule(
        "theft",
        r"\b(?:facilitate|facilitates|facilitating|enable|enables|enabling|automate|automates|"
        r"automating|commit|commits|committing)\W+(?:the\W+)?theft\b",
    ),
    _rule(
        "secure secured restricted",
        r"\b(?:break|breaks|breaking|sneak|sneaking|get|getting|trespass|trespassing)\W+into\W+"
        r"(?:a|an|the)\W+(?:secure|secured|restricted)\W+(?:location|facility|area|building|site|"
        r"compound|zone)\b",
    ),
]

_DRUG_HARD = _Words(
    "cocaine heroin heroine meth methamphetamine crystal_meth fentanyl lsd mdma ketamine pcp ghb "
    "rohypnol roofies date_rape_drug{,s} opium dmt illegal_drugs illicit_drugs street_drugs "
    "narcotics controlled_substances amphetamine{,s} bath_salts synthetic_cannabinoids "
    "crack_cocaine illegal_substances mescaline"
)
_DRUG_SOFT = _Words(
    "marijuana marihuana cannabis hashish psilocybin magic_mushrooms shrooms anabolic_steroids"
)
# Words that are drugs only in some contexts: "a gram of coke", not "a can of coke".
_DRUG_AMBIGUOUS = _Words("coke crack weed ecstasy molly acid smack")
_DRUG_AMOUNT = (
    r"(?:some|any|more|grams?\W+of|an?\W+gram\W+of|ounces?\W+of|an?\W+ounce\W+of|kilos?\W+of|"
    r"an?\W+kilo\W+of|an?\W+bag\W+of|bags\W+of|lines?\W+of|an?\W+line\W+of|an?\W+eighth\W+of|"
    r"an?\W+hit\W+of|rocks?\W+of)"
)
_DEAL = (
    "buy{,s,ing} purchas{e,es,ing} get{,s} getting obtain{,s,ing} scor{e,es,ing} find{,s,ing} "
    "order{,s,ing} acquir{e,es,ing} sell{,s,ing} deal{,s,ing} distribut{e,es,ing} "
    "smuggl{e,es,ing} traffic{,s} trafficking ship{,s} shipping import{,s,ing} grow{,s,ing} "
    "hid{e,es,ing} conceal{,s,ing} make{,s} making cook{,s,ing} "
    "synthesi{ze,zes,zing,se,ses,sing} produc{e,es,ing} manufactur{e,es,ing} extract{,s,ing} "
    "refin{e,es,ing} brew{,s,ing}"
)
_DRUG_DEAL = _Words(_DEAL, anchor=False)
_DRUG_USE = _Words(
    _DEAL + " use{,s} using tak{e,es,ing} inject{,s,ing} snort{,s,ing} smok{e,es,ing}",
    anchor=False,
)
_DRUG_PROMOTED = _Words(
    "drug{,s} drug_use drug_abuse drunk_driving alcohol_abuse binge_drinking addiction "
    "steroids performance-enhancing_drugs illegal_substances"
)
_DRUGS = [
    _rule(_DRUG_HARD, rf"{_DRUG_USE}{_near(3)}{_DRUG_HARD}"),
    _rule(_DRUG_SOFT, rf"{_DRUG_DEAL}{_near(3)}{_DRUG_SOFT}"),
    _rule(
        _DRUG_AMBIGUOUS,
        rf"{_DRUG_USE}\W+(?:{_DRUG_AMOUNT}\W+)?{_DRUG_AMBIGUOUS}(?!\W+(?:cans?|bottles?|"
        r"in\W+(?:my|the|a|your)\b|on\W+(?:my|the|a|your)\b|from\W+(?:my|the|a|your)\b))",
    ),
    _rule(
        "pill pills tab tabs tablet tablets",
        r"\b(?:ecstasy|molly|acid|lsd|mdma)\W+(?:pills?|tabs?|tablets?)\b",
    ),
    _rule(
        _DRUG_HARD,
        rf"{_DRUG_HARD}{_near(5)}\b(?:synthesi[sz]ed|made|manufactured|produced|cooked)\b",
    ),
    _rule(_DRUG_PROMOTED, rf"{_PROMOTE}{_near(10)}{_DRUG_PROMOTED}"),
    _rule(
        "drug drugs",
        rf"\bdrugs?\b{_near(6)}\b(?:synthesi[sz]ed|made|cooked|produced|synthesi[sz]e|make|cook)"
        r"\W+(?:[\w']+\W+)?(?:at\W+home|in\W+a\W+(?:home|kitchen|garage|bathtub)|with\W+household)\b",
    ),
    _rule(
        "drug drugs",
        r"\b(?:smuggle|smuggles|smuggling|traffic|trafficking|sell|sells|selling|deal|dealing|"
        r"distribute|distributing)\W+(?:illegal\W+)?drugs\b|\bdrug\W+(?:trafficking|smuggling|"
        r"dealing|cartel)\b",
    ),
]

_GROUP_WORD = (
    r"(?:black|white|brown|asian|jewish|muslim|arab|hispanic|latino|latina|latinx|mexican|"
    r"african|chinese|indian|roma|romani|gypsy|gay|lesbian|bisexual|trans|transgender|queer|"
    r"lgbt\w*|non-binary|nonbinary|disabled|immigrant|migrant|refugee|indigenous|native|"
    r"aboriginal|christian|catholic|hindu|sikh|buddhist|atheist|old|elderly|poor|homeless|"
    r"asexual|divorced|pregnant|foreign|minority|rural)"
)
_GROUP = (
    rf"(?:\b{_GROUP_WORD}\W+(?:people|persons|men|women|folks|communit(?:y|ies)|kids|children|"
    r"families|immigrants|individuals|americans|citizens)\b"
    r"|\b(?:jews|muslims|blacks|whites|gays|lesbians|immigrants|migrants|refugees|women|"
    r"minorities|latinos|hispanics|hindus|christians|buddhists|sikhs|atheists|arabs|asians|"
    r"africans|mexicans|roma|gypsies|the\W+disabled|the\W+elderly|the\W+poor)\b"
    r"|\b(?:particular|specific|certain|ethnic|racial|religious)\W+(?:race|religion|"
    r"group|groups|ethnicity|community|communities|minority|minorities)\b"
    r"|\bminority\W+groups?\b|\b(?:races|religions|ethnicities)\b)"
)
_GROUP_ANCHORS = set(
    _words_of(
        "people persons men women folks community communities kids children families immigrants "
        "individuals americans citizens jews muslims blacks whites gays lesbians migrants refugees "
        "minorities latinos hispanics hindus christians buddhists sikhs atheists arabs asians "
        "africans mexicans roma gypsies disabled elderly poor race religion group groups ethnicity "
        "minority races religions ethnicities"
    )
)
_HATE_WORD = _Words(
    "racism racist hatred bigotry discrimination xenophobia antisemitism anti-semitism "
    "islamophobia homophobia transphobia misogyny sexism white_supremacy supremacist{,s} "
    "racial_tension{,s} racial_hatred racial_violence ethnic_cleansing segregation "
    "dehumani{zation,sation} oppression apartheid nazism eugenics hate_speech "
    "violent_rhetoric division intolerance"
)
_HATE = [
    _rule(
        "hate hateful racist racial slurs nazi antisemitic semitic homophobic transphobic sexist",
        r"\b(?:write|writes|writing|create|creates|creating|generate|generates|generating|"
        r"produce|produces|producing|spread|spreads|spreading|automate|automates|automating|"
        r"promote|promotes|promoting|post|posts|posting|use|uses|using|contain|contains|"
        r"containing|incite|incites|inciting|full\W+of|compose|composing|publish|publishes)\W+"
        r"(?:[\w']+\W+){0,4}?(?:hate\W+speech|hateful\W+(?:content|messages?|rhetoric|propaganda|"
        r"comments?|speech)|racist\W+(?:jokes?|content|propaganda|slurs?|messages?|rhetoric|"
        r"remarks?|manifesto|memes?)|racial\W+slurs?|slurs|nazi\W+propaganda|antisemitic\W+\w+|"
        r"anti-semitic\W+\w+|homophobic\W+\w+|transphobic\W+\w+|sexist\W+(?:jokes?|content|"
        r"remarks?))\b",
    ),
    _rule(_HATE_WORD, rf"{_PROMOTE}{_near(5)}{_HATE_WORD}"),
    _rule(
        "violence attack attacks hatred discrimination harassment threat threats hate bias "
        "crime crimes",
        r"\b(?:violence|attacks?|hatred|discrimination|harassment|threats?|hate|bias|crimes?)"
        rf"\W+(?:against|towards?|toward)\W+(?:[\w']+\W+){{0,2}}?{_GROUP}",
    ),
    _rule(
        "inferior subhuman sub human animals vermin parasites genetically intelligent",
        also=_GROUP_ANCHORS,
        pattern=rf"{_GROUP}\W+(?:[\w']+\W+){{0,2}}?(?:are|is|being|as)\W+(?:[\w']+\W+)?(?:inferior|subhuman|"
        r"sub-human|less\W+human|animals|vermin|parasites|genetically\W+inferior|"
        r"less\W+intelligent)\b",
    ),
    _rule(
        _GROUP_ANCHORS,
        r"\bwhy\W+(?:should|shouldn't|must|is\W+it\W+(?:best|right|good|better)\W+(?:for|that)|"
        rf"would\W+it\W+be\W+(?:best|good|better)\W+if\W+we\W+took\W+away)\W+{_GROUP}\W+"
        r"(?:[\w']+\W+){0,2}?(?:not|never|be\W+(?:barred|banned|denied|excluded|deported|kicked|"
        r"discriminated|segregated|forbidden|prohibited|stripped|kept)|earn\W+less|"
        r"have\W+(?:fewer|no)\W+rights|go\W+through\W+extra|make\W+all|be\W+overrepresented)\b",
    ),
    _rule(
        _GROUP_ANCHORS,
        rf"\b(?:reasons?\W+why|why)\W+(?:it\W+is\W+right\W+for\W+)?{_GROUP}\W+(?:should\W+)?"
        r"(?:not|never|earn\W+less|be\W+denied|have\W+their)\b",
    ),
    _rule(
        "eradicate eradicating exterminate exterminating eliminate eliminating wipe wiping rid "
        "deport deporting kill killing cleanse cleansing decimate decimating purge purging",
        r"\b(?:eradicate|eradicating|exterminate|exterminating|eliminate|eliminating|wipe\W+out|"
        r"wiping\W+out|get\W+rid\W+of|getting\W+rid\W+of|deport|deporting|kill|killing|cleanse|"
        rf"cleansing|decimate|decimating|purge|purging)\W+(?:all\W+)?(?:the\W+)?{_GROUP}",
    ),
    _rule(
        "decimate decimating wipe wiping exterminate exterminating eradicate eradicating "
        "annihilate annihilating",
        r"\b(?:decimate|decimating|wipe\W+out|wiping\W+out|exterminate|exterminating|eradicate|"
        r"eradicating|annihilate|annihilating)\W+(?:a|an|the|entire)?\W*(?:[\w']+\W+){0,2}?"
        r"(?:population|village|villages|city|town|tribe|people|community|race|humanity|mankind|"
        r"human\W+race)\b",
    ),
    _rule(
        "racist sexist bigoted homophobic transphobic misogynistic discriminatory",
        r"\b(?:write|writes|writing|tell|telling|make|makes|making|create|creating|generate|"
        r"generating|give|compose|share|post)\W+(?:[\w']+\W+){0,3}?(?:racist|sexist|bigoted|"
        r"homophobic|transphobic|misogynistic|discriminatory)\b",
    ),
    _rule(
        "discrimination segregation crow apartheid slavery concentration holocaust",
        r"\b(?:restore|restoring|bring\W+back|replicate|replicating|recreate|recreating)\W+"
        r"(?:[\w']+\W+){0,3}?(?:discrimination|segregation|jim\W+crow|apartheid|slavery|"
        r"concentration\W+camps?|the\W+holocaust)\b",
    ),
    _rule(_GROUP_ANCHORS, rf"\b(?:took|take|taking)\W+away\W+{_GROUP}"),
    _rule(
        "cleansing genocide slavery holocaust apartheid",
        r"\bbenefits\W+of\W+(?:[\w']+\W+)?(?:ethnic\W+cleansing|genocide|slavery|the\W+holocaust|"
        r"apartheid)\b",
    ),
    _rule("slave", r"\bslave\W+trade\W+(?:[\w']+\W+){0,2}?(?:a\W+good\W+thing|justified|good)\b"),
]

_HARASS_VERB = _Words(
    "cyberbull{y,ies,ying} bull{y,ies,ying} harass{,es,ing} stalk{,s,ing} cyberstalk{,s,ing} "
    "dox{,es,ing} "
    "doxx{,es,ing} intimidat{e,es,ing} humiliat{e,es,ing} troll{,s,ing} torment{,s,ing} "
    "terrori{ze,zes,zing,se,ses,sing} threaten{,s,ing} swat{,s,ting} spam{,s,ming} "
    "defam{e,es,ing} slander{,s,ing} libel{,s,ing}"
)
_BULLYING = (
    "cyberbullying bullying harassment cyberharassment stalking cyberstalking doxing doxxing "
    "trolling swatting"
)
_BULLYING_RE = (
    r"(?:cyber[\s-]?)?(?:bullying|harassment|stalking)|cyberbullying|cyberharassment|"
    r"cyberstalking|doxx?ing|trolling|swatting"
)
_HARASSMENT = [
    _rule(_HARASS_VERB, rf"{_HARASS_VERB}\W+(?:and\W+\w+\W+)?(?:[\w']+\W+)?(?:{_WHOM}|{_OTHERS})"),
    _rule(_BULLYING, rf"\b(?:engage|engaging|engages)\W+in\W+(?:{_BULLYING_RE})\b"),
    _rule(_BULLYING, rf"{_PROMOTE}{_near(4)}\b(?:{_BULLYING_RE})\b"),
    _rule(
        _BULLYING + " bully cyberbully harass stalk dox doxx",
        r"\b(?:guide|tutorial|tips|app|apps|tool|tools|bot|program|platform)\W+(?:for|to)\W+"
        rf"(?:[\w']+\W+)?(?:{_BULLYING_RE}|(?:cyber[\s-]?)?(?:bully|harass|stalk)|cyberbully|"
        r"doxx?)\b",
    ),
    _rule(
        "defame defames defaming slandering libeling libelling",
        r"\b(?:defame|defames|defaming|slandering|libeling|libelling)\b",
    ),
    _rule(
        "threatening",
        r"\b(?:write|writes|writing|send|sends|sending|compose|composing|draft|drafting|post|"
        r"posting)\W+(?:[\w']+\W+){0,2}?threatening\W+(?:letters?|messages?|emails?|notes?|texts?|"
        r"comments?)\b|\bthreatening\W+(?:letters?|messages?|emails?|notes?|texts?)\W+to\b",
    ),
    _rule(
        "accusation accusations allegation allegations rumor rumors rumour rumours",
        r"\b(?:make|makes|making|spread|spreads|spreading|write|writing|post|posting|start|"
        r"starting|fabricate|fabricating)\W+(?:[\w']+\W+)?(?:false|fabricated|fake|made-up|"
        r"baseless)\W+(?:accusations?|allegations?|rumou?rs?)\b",
    ),
    _rule(
        "reputation reputations career credibility",
        r"\b(?:ruin|ruins|ruining|damage|damages|damaging|destroy|destroys|destroying|sabotage|"
        r"sabotages|sabotaging|tarnish|tarnishes|tarnishing|smear|smears|smearing)\W+"
        rf"(?!{_MINE})(?:[\w']+\W+){{0,3}}?(?:reputation|reputations|career|"
        r"credibility)\b",
    ),
    _rule(
        "spam unsolicited unwanted",
        r"\b(?:send|sends|sending|distribute|distributes|distributing|generate|generates|"
        r"generating|automate|automates|automating|spread|spreads|post|posts|posting)\W+"
        r"(?:[\w']+\W+){0,4}?(?:spam\b|(?:unsolicited|unwanted)\W+(?:[\w']+\W+)?(?:messages|emails|"
        r"texts|calls|comments|mail)\b)",
    ),
    _rule(
        "inflammatory hateful offensive abusive harassing",
        r"\b(?:post|posts|posting)\W+(?:[\w']+\W+)?(?:inflammatory|hateful|offensive|abusive|"
        r"harassing)\W+(?:comments?|messages?|content|posts?|replies)\b",
    ),
    _rule("revenge sextortion sextort sextorting", r"\brevenge\W+porn\b|\bsextort(?:ion|ing)?\b"),
]

_FALSE_INFO = _Words(
    "misinformation disinformation propaganda conspiracy_theory conspiracy_theories hoax{,es} "
    "fake_news false_information false_info falsehoods lies rumou{r,rs} false_claims "
    "misleading_information fake_stories false_narratives",
    guard=_DEFENSIVE,
)
_MISINFORMATION = [
    _rule(
        "fake false fabricated bogus misleading doctored",
        rf"{_CRAFT}{_near(4)}(?:fake|false|fabricated|bogus|misleading|doctored)\W+"
        r"(?:news|stor(?:y|ies)|articles?|information|info|claims?|reports?|headlines?|"
        rf"rumou?rs?|evidence|statistics|quotes?|studies|study|websites?|posts?)\b{_DEFENSIVE}",
    ),
    _rule(_FALSE_INFO, rf"{_PROMOTE}{_near(4)}{_FALSE_INFO}"),
    _rule(
        "propaganda",
        rf"{_CRAFT}{_near(3)}propaganda\b",
    ),
    _rule(
        "hoax fake fabrication lie myth staged fabricated",
        r"\b(?:claim|claims|claiming|argue|argues|arguing|prove|proves|proving|convince|convinces|"
        r"convincing|show|shows|showing|make\W+people\W+believe|persuade|persuading)\b"
        rf"{_near(6)}\b(?:is|was|are|were)\W+(?:a\W+|an\W+)?(?:[\w']+\W+)?(?:hoax|fake|fabrication|"
        r"lie|myth|staged|fabricated)\b",
    ),
    _rule(
        "happened existed occurred happen took",
        r"\b(?:convince|convinces|convincing|make\W+people\W+believe|prove|proving|show|showing|"
        rf"persuade|persuading)\b{_near(6)}\b(?:never\W+(?:happened|took\W+place|existed|occurred)|"
        r"didn't\W+happen)\b",
    ),
    _rule(
        "mislead misleads misleading deceive deceives deceiving misinform misinforms misinforming",
        r"\b(?:mislead|misleads|misleading|deceive|deceives|deceiving|misinform|misinforms|"
        r"misinforming)\W+(?:the\W+)?(?:public|consumers|customers|voters|investors|people|readers|"
        r"patients|viewers|users)\b",
    ),
    _rule(
        "manipulate manipulates manipulating rig rigs rigging steal steals stealing",
        r"\b(?:manipulate|manipulates|manipulating|rig|rigs|rigging|steal|steals|stealing)\W+"
        r"(?:[\w']+\W+){0,2}?(?:public\W+opinion|elections?|votes?|voting|ballots?|"
        r"search\W+engine\W+results|(?:social\W+media\W+)?algorithms)\b",
    ),
    _rule(
        "claim claims claiming",
        rf"\b(?:claim|claims|claiming)\b{_near(14)}\bwithout\W+(?:any\W+)?(?:scientific\W+)?"
        r"(?:evidence|proof|basis|sources?)\b",
    ),
    _rule(
        "deny denies denying",
        r"\b(?:deny|denies|denying)\W+(?:that\W+)?the\W+(?:holocaust|genocide|massacre)\b",
    ),
]

_PRIVATE_THING = _Words(
    "social_security_number ssn password{,s} pin passcode login{,s} credentials "
    "credit_card_details credit_card_number credit_card_information credit_card_info "
    "bank_details bank_account_details bank_account_number bank_account_information "
    "home_address address phone_number mobile_number mobile_phone_number email_address "
    "medical_record{,s} medical_history mental_health_history browsing_history "
    "internet_browsing_history location messages emails texts private_messages dms diary "
    "tax_records criminal_record criminal_history passport_number driver's_license_number "
    "drivers_license_number date_of_birth birth_certificate iphone_pin phone_pin "
    "instagram_password facebook_login immigration_status whereabouts movements call_history "
    "search_history camera webcam phone_calls calls conversations"
)
_PRIVACY = [
    _rule(
        "consent knowledge permission knowing noticing authorization authorisation",
        r"\b(?:collect\w*|track\w*|record\w*|spy\w*|spies|monitor\w*|access\w*|shar\w+|sell\w*|"
        r"tak\w+\W+(?:pictures|photos|videos)|photograph\w*|film\w*|read\w*|install\w*|harvest\w*|"
        r"gather\w*|sends?|sending|locat\w*|listen\w*)\b(?:\W+[\w']+){0,10}?\W+(?:without|w/o)\W+"
        rf"(?!{_MINE})(?:[\w']+\W+)?(?:consent|knowledge|permission|knowing|noticing|"
        r"authori[sz]ation)\b",
    ),
    _rule(
        "secretly covertly",
        r"\b(?:secretly|covertly)\W+(?:record|recording|track|tracking|monitor|monitoring|film|"
        r"filming|photograph|photographing|read|reading|watch|watching|listen|"
        r"listening|install|installing)\b(?!\W+(?:my|our)\W+(?:own\W+)?(?:kids?|children|child|son|"
        r"daughter|house|home|property|pets?))",
    ),
    _rule(
        "spy spies spying",
        r"\b(?:spy|spies|spying)\W+on\b(?!\W+(?:my|our)\W+(?:own\W+)?(?:kids?|children|child|son|"
        r"daughter|teen|teenager|house|home|property|pets?|dog|cat|baby))",
    ),
    _rule(
        _PRIVATE_THING,
        also=_OTHERS_ANCHORS - {"his", "her", "their"},
        pattern=r"\b(?:track|tracks|tracking|trace|tracing|locate|locating|monitor|monitoring|follow|"
        r"following|read|reading|access|accessing|intercept|intercepting|tap|tapping|record|"
        r"recording|find|finding|get|getting|see|look\W+up|what\W+is|what\W+are|what's)\W+"
        rf"(?:into\W+)?{_OTHERS_POSSESSIVE}\W+(?:[\w']+\W+)?{_PRIVATE_THING}",
    ),
    _rule(
        "collect collects collecting harvest harvests harvesting scrape scrapes scraping gather "
        "gathers gathering",
        r"\b(?:collect|collects|collecting|harvest|harvests|harvesting|scrape|scrapes|scraping|"
        r"gather|gathers|gathering)\W+(?:[\w']+\W+){0,3}?(?:personal|private|sensitive|user|users'|"
        rf"customer|biometric)\W+(?:data|information|details|photos)\b{_near(8)}\b(?:third\W+"
        r"part(?:y|ies)|without|secretly|sell|sells|selling)\b",
    ),
    _rule(
        "leak leaks leaking expose exposes exposing publish publishes publishing dox doxx doxing "
        "doxxing",
        r"\b(?:leak|leaks|leaking|expose|exposes|exposing|publish|publishes|publishing|doxx?|"
        r"doxx?ing)\W+(?:[\w']+\W+){0,2}?(?:their|his|her|someone's|people's|personal|private|"
        r"confidential)\W+(?:[\w']+\W+)?(?:information|data|details|photos|address|addresses|emails|"
        r"messages)\b",
    ),
    _rule(
        "leak leaks leaking",
        r"\b(?:leak|leaks|leaking)\W+(?:[\w']+\W+)?(?:confidential|sensitive|classified|secret)\W+"
        r"(?:[\w']+\W+)?(?:information|data|documents|files)\b",
    ),
]

_MINOR = _Words(
    "child children kid{,s} minor{,s} underage preteen{,s} pre-teen{,s} toddler{,s} "
    "infant{,s} baby babies teen{,s} teenage teenager{,s} schoolgirl{,s} schoolboy{,s} "
    "juvenile{,s} young_girl{,s} young_boy{,s} little_girl{,s} little_boy{,s}"
)
_SEXUAL_MINORS = [
    _rule(
        _MINOR,
        rf"{_MINOR}\W+(?:[\w']+\W+)?(?:porn|pornography|pornographic|nudes?|naked\W+(?:photos?|"
        r"pictures?|pics?|images?|videos?)|erotica?|sexually\W+explicit|explicit\W+(?:photos?|"
        r"pictures?|images?|videos?|content)|lewd|sexuali[sz]ed|sexy)\b",
    ),
    _rule(
        _MINOR.anchors() | {"year"},
        r"\b(?:sex|sexual|sexually|intercourse|porn|pornography|nudes?|erotic)\W+(?:[\w']+\W+){0,3}?"
        r"(?:with|of|involving|featuring|depicting)\W+(?:a|an|the)?\W*(?:[\w']+\W+)?"
        rf"(?:\d+\W+year\W+olds?|{_MINOR})",
    ),
    _rule(
        _MINOR,
        r"\b(?:molest|molests|molesting|groom|grooms|grooming|rape|rapes|raping|seduce|seducing|"
        r"sexually\W+abuse|sexually\W+abusing|abuse|abusing)\W+(?:a|an|the|my|his|her|their|"
        rf"some|young)?\W*(?:[\w']+\W+)?{_MINOR}",
    ),
    _rule(
        "minor child kid teen teenager",
        r"\b(?:pose|poses|posing|pretend|pretends|pretending|masquerade|masquerading)\W+"
        r"(?:to\W+be\W+)?as\W+(?:an?\W+)?(?:minor|child|kid|teen|teenager)\b"
        r"|\b(?:pose|poses|posing|pretend|pretends|pretending)\W+to\W+be\W+(?:an?\W+)?"
        r"(?:minor|child|kid|teen|teenager)\b",
    ),
    _rule(
        "csam lolicon shotacon material",
        r"\bcsam\b|\bchild\W+sexual\W+abuse\W+material\b|\blolicon\b|\bshotacon\b",
    ),
    _rule(
        "pedophilia pedophilic paedophilia paedophilic",
        r"\b(?:satisfy|satisfying|act\W+on|acting\W+on|indulge|indulging|fulfil|fulfill|"
        r"fulfilling)\W+(?:[\w']+\W+)?(?:pedophilia|pedophilic|paedophilia|paedophilic)\b",
    ),
    _rule(
        "child",
        r"\bchild\W+(?:porn|pornography|pornographic|sex\W+abuse\W+images?|sexual\W+abuse\W+"
        r"images?|nudes?|erotica)\b",
    ),
]

_RULES: dict[str, list[_Rule]] = {
    "weapons": _WEAPONS,
    "violence": _VIOLENCE,
    "self_harm": _SELF_HARM,
    "cyberattack": _CYBERATTACK,
    "fraud": _FRAUD,
    "crime": _CRIME,
    "drugs": _DRUGS,
    "hate": _HATE,
    "harassment": _HARASSMENT,
    "misinformation": _MISINFORMATION,
    "privacy": _PRIVACY,
    "sexual_minors": _SEXUAL_MINORS,
}

# ------------------------------------------------------------------------------- exemptions

# "What does 'eliminating a person' mean?", "What is the definition of murder?"
_DEFINITION = re.compile(
    r"^\W*(?:what\W+(?:does|do)\b.*\bmean\W*$|what\W+is\W+meant\W+by\b|"
    r"what\W+(?:is|are)\W+the\W+(?:[\w']+\W+)?(?:definition|meaning)\W+of\b|define\b)"
)
# Questions about what others did or do: "How did they rob the casino?", "Why did X kill ...?"
_NARRATIVE = re.compile(
    r"^\W*(?:how|why|when|where|what|who|which)\W+(?:[\w']+\W+){0,2}?(?:did|does|was|were|had)\W+"
    r"(?!(?:i|we|you|one|u|someone|somebody|anyone|a\W+person|people)\b)"
)
# How bad actors operate, asked to defend against them: "How do scammers target the elderly?"
_AWARENESS = re.compile(
    r"^\W*(?:how|why|what|when|where|which)\W+(?:do|does|can|could|would|might|will|are|is)\W+"
    r"(?:[\w']+\W+)?(?:hackers?|thieves|thief|scammers?|fraudsters?|criminals?|attackers?|"
    r"burglars?|phishers?|cybercriminals?|identity\W+thieves|spammers?|stalkers?|predators?)\b"
)
_AWARENESS_EXEMPT = frozenset({"cyberattack", "fraud", "crime", "privacy", "harassment"})
# Fiction, games and sport: "in my novel", "in a chess game", "for a TV show".
_FICTION = re.compile(
    r"\b(?:in|for|from|within|inside|during|into)\W+(?:(?:a|an|the|my|our|this|his|her|their|"
    r"your)\W+)?(?:[\w'-]+\W+){0,3}?(?:video\W*games?|games?|novels?|books?|stor(?:y|ies)|"
    r"short\W+stor(?:y|ies)|films?|movies?|tv\W+shows?|tv\W+series|shows?|series|plays?|"
    r"screenplays?|fiction|comics?|manga|anime|rpgs?|mmos?|d&d|dnd|role-?play|simulations?|"
    r"chess|checkers|poker|boxing|judo|karate|wrestling|fencing|paintball|laser\W+tag|airsoft|"
    r"shooting\W+range|sparring|martial\W+arts|football|soccer|basketball|baseball|hockey|"
    r"rugby|mma|ufc)\b"
    r"|\b(?:my|a|the|his|her|their)\W+(?:main\W+)?character(?:'s)?\b|\bcharacter's\b"
    r"|\b(?:scene|chapter|story|novel|screenplay|episode|plot)\W+(?:where|in\W+which|about)\b"
    r"|\bi'?m\W+writing\b|\bi\W+am\W+writing\b"
)

# ------------------------------------------------------------------------------ compilation


# Every rule on its own, with its category.
_COMPILED: list[tuple[str, re.Pattern[str]]] = [
    (category, re.compile(pattern)) for category, rules in _RULES.items() for _, _, pattern in rules
]
# Anchor word -> the rules that can only match when the word is in the text.
_ANCHORS: dict[bytes, tuple[int, ...]] = {}
# Rule -> its second set of words, for the rules that have one.
_ALSO: dict[int, frozenset[bytes]] = {}
for _index, (_words, _also, _) in enumerate(rule for rules in _RULES.values() for rule in rules):
    for _word in _words:
        _key = _word.encode()
        _ANCHORS[_key] = (*_ANCHORS.get(_key, ()), _index)
    if _also:
        _ALSO[_index] = frozenset(word.encode() for word in _also)
        for _word in _also:
            _ANCHORS.setdefault(_word.encode(), ())
_ANCHOR_SET = frozenset(_ANCHORS)
# bytes.translate table: ASCII letters lowered, everything else a space.
_LETTERS = bytes(
    (code | 0x20) if (65 <= code <= 90 or 97 <= code <= 122) else 32 for code in range(256)
)


def _candidate_rules(lowered: str) -> list[int]:
    """The rules whose anchor words are in the text, in order."""
    words = lowered.encode("utf-8", "replace").translate(_LETTERS).split()
    hits = _ANCHOR_SET.intersection(words)
    if not hits:
        return []
    rules: set[int] = set()
    for word in hits:
        rules.update(_ANCHORS[word])
    return sorted(rule for rule in rules if rule not in _ALSO or not _ALSO[rule].isdisjoint(hits))


def _normalise(text: str) -> str:
    lowered = text.lower()
    if "\u2019" in lowered or "\u2018" in lowered:
        lowered = lowered.replace("\u2019", "'").replace("\u2018", "'")
    return lowered


def screen_harm(text: str) -> list[str]:
    """Categories the text asks for, in HARM_CATEGORIES order; empty when none.

    Meant for user/prompt turns: it looks for requests for harmful content, not for harm
    mentioned, reported or suffered.
    """
    if not text:
        return []
    lowered = _normalise(text)
    candidates = _candidate_rules(lowered)
    if not candidates:
        return []
    return _screen(lowered, candidates)


def _screen(lowered: str, candidates: Iterable[int]) -> list[str]:
    found: list[str] = []
    for index in candidates:
        category, pattern = _COMPILED[index]
        if category not in found and pattern.search(lowered):
            found.append(category)
    if not found or _DEFINITION.search(lowered) or _NARRATIVE.search(lowered):
        return []
    if any(category in _FICTION_EXEMPT for category in found) and _FICTION.search(lowered):
        found = [category for category in found if category not in _FICTION_EXEMPT]
    if any(category in _AWARENESS_EXEMPT for category in found) and _AWARENESS.search(lowered):
        found = [category for category in found if category not in _AWARENESS_EXEMPT]
    return [category for category in HARM_CATEGORIES if category in found]


def screen_harm_unfiltered(text: str) -> list[str]:
    """`screen_harm` without its word pre-check: every category's patterns run (for tests)."""
    return _screen(_normalise(text), range(len(_COMPILED))) if text else []
