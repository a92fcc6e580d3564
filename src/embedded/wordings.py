"""How each concept of the embedded vocabulary is worded (data; src.embedded.phrasings builds the sentences).

A concept's wording is descriptor terms of three kinds, each crossed with its templates, plus
sentences used as written:

* ``states`` fit "The person is {}." ("grinning", "in tears"): STATE_TEMPLATES;
* ``looks`` are adjectives ("happy"): LOOK_TEMPLATES ("a happy face", "The person looks happy.");
* ``features`` are noun phrases ("a big smile"): FEATURE_TEMPLATES ("a face with a big smile");
* ``extras``: fragments and sentences about the face part, with intensity and punctuation variants.

``heldout_terms`` (x HELDOUT_TEMPLATES) and ``heldout_extras`` are paraphrases no training sees: no
training phrasing repeats one (up to case and punctuation) and no held-out term occurs inside a
training phrasing. Fields are "|"-separated. Left/right are the image's left/right, as in
src.embedded.params.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TEMPLATE", "STATE_TEMPLATES", "LOOK_TEMPLATES", "FEATURE_TEMPLATES", "HELDOUT_TEMPLATES",
           "Wording", "WORDINGS"]

TEMPLATE = "The person is {}."
STATE_TEMPLATES = ["The person is {}.", "someone {}", "a photo of someone who is {}", "they are {}",
                   "a close-up of someone {}", "{}", "a man {}", "The woman is {}!", "a cartoon character {}"]
LOOK_TEMPLATES = ["a {} face", "{} person", "a face that is {}", "The person looks {}.", "a {} expression",
                  "looking {}"]
FEATURE_TEMPLATES = ["a face with {}", "someone with {}", "The person has {}.", "{}", "a portrait showing {}"]
HELDOUT_TEMPLATES = ["a picture of an individual {}", "This human being is {}."]


@dataclass(frozen=True)
class Wording:
    states: tuple[str, ...]
    looks: tuple[str, ...]
    features: tuple[str, ...]
    extras: tuple[str, ...]
    heldout_terms: tuple[str, ...]
    heldout_extras: tuple[str, ...]


def _split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split("|") if s.strip())


def _w(states: str, looks: str, features: str, extras: str, heldout_terms: str, heldout_extras: str) -> Wording:
    return Wording(*map(_split, (states, looks, features, extras, heldout_terms, heldout_extras)))


WORDINGS: dict[str, Wording] = {
    "smiling": _w(
        "grinning|beaming|smiling broadly|smiling warmly|smiling a little|grinning from ear to ear|smiling happily|"
        "chuckling", "happy|cheerful|joyful|very happy|smiley|glad|jolly|merry",
        "a big smile|a grin|a wide grin|a warm smile|a slight smile",
        "a smiling face|someone with a big smile|smile|big grin|Smiling!|the person smiles.|she smiles widely|"
        "the mouth curves up into a smile|the corners of the mouth turn up|a smile spreads across the face|"
        "the lips curve upward|a cheerful, smiling mouth|smiles", "all smiles",
        "a face lit up with joy|lips curling up in delight|a person who looks pleased as punch|SMILE WIDE|"
        "he's got a huge happy grin"),
    "angry": _w(
        "furious|mad at someone|scowling|glaring angrily|raging|losing their temper|very angry|irate|hot-headed",
        "angry|mad|cross|hot-tempered",
        "an angry glare|a furious scowl|lowered angry brows|an angry snarl|a wrathful stare",
        "an angry face|someone who looks really cross|angry|so angry!|the brows pull down in anger|"
        "the person glares in rage|eyebrows slanted down angrily|he is mad|grr|the face darkens angrily", "enraged",
        "a face boiling with rage|fuming with anger|brows knitted in fury|He is livid!|seeing red"),
    "closing eyes": _w(
        "closing their eyes|keeping the eyes shut|closing eyes|shutting both eyes|sleeping|resting the eyes|"
        "closing the eyes tightly", "sleepy|asleep",
        "closed eyes|both eyes closed|eyes shut tight|shut eyelids|closed eyelids|the eyes closed",
        "a face with closed eyes|close eyes|eyes closed|the eyes shut|the eyelids close|she closes her eyes|"
        "he shuts his eyes|Eyes shut.|the eyes slowly close|both eyes fall shut|the eyelids come down|"
        "eyes closed tight", "resting with lids down",
        "both eyelids lowered completely|eyelids sealed tight|her eyes are closed now|shutting both eyes gently|"
        "dozing off, eyes closed"),
    "winking": _w(
        "giving a wink|winking one eye|winking|winking playfully|closing one eye|winking at the camera|"
        "shutting one eye|blinking one eye", "cheeky", "a wink|one eye closed|a playful wink|a sly wink",
        "a winking face|wink|a quick wink|the person winks.|she winks|one eye closes, the other stays open|"
        "one eyelid closes|;)|winks one eye|he gives a sly wink|one eye blinks shut", "doing a cheeky wink",
        "one eye shut playfully|a flirty wink at the viewer|he winks knowingly|one eyelid drops for a moment|"
        "wink wink ;)"),
    "shocked": _w(
        "in shock|horrified|shocked|gasping in shock|screaming in fear|scared stiff|petrified|afraid",
        "shocked|scared|terrified|frightened|very shocked|afraid",
        "a look of shock|a terrified scream|a horrified gasp|wide eyes and a gaping mouth",
        "a shocked face|shock!|OMG, shocked|the eyes go wide and the jaw drops|eyes wide, mouth open in fear|"
        "the person screams|he recoils in fear|a frightened person screaming", "jolted by a terrible shock",
        "a face frozen in horror|mouth agape in terror|scared out of their wits|she gasps in horror|"
        "totally freaked out"),
    "pouting": _w(
        "sulking|pouting sulkily|pouting|pushing out the lips|pouting grumpily|pushing out the lower lip",
        "sulky|grumpy|huffy", "a pout|a sulky pout|a big pout|a slight pout",
        "a pouting face|pout|the lips push forward|the lower lip sticks out|she pouts|he pouts unhappily|"
        "a childish pout|sulk", "making a sulky face",
        "lips pushed out in a sulk|a petulant moue|sulks like a spoilt child|pouty|lips thrust forward, unhappy"),
    "crying": _w(
        "in tears|weeping|crying|crying sadly|shedding tears|tearing up|crying hard|whimpering|weeping openly",
        "tearful|weepy|upset and tearful",
        "tears on the cheeks|tears streaming down the face|a tear-stained face|wet eyes and tears",
        "a crying face|someone with tears on the cheeks|cry|tears|the person cries.|tears fall from the eyes|"
        "he weeps|a sad face with tears|:'(|tears in the eyes|the eyes fill with tears", "sobbing",
        "tears rolling down a sad face|bawling her eyes out|teary-eyed and heartbroken|eyes wet, about to cry|"
        "boo hoo"),
    "disgusted": _w(
        "grossed out|repulsed|disgusted|sickened|recoiling in disgust|feeling sick at something",
        "disgusted|grossed-out|very disgusted|queasy", "a look of disgust|a disgusted grimace|a sour, disgusted face",
        "a disgusted face|ew|yuck!|ugh, disgusting|the lip curls in disgust|she finds it disgusting|"
        "something smells awful|that is gross|ick|the nose scrunches up in disgust", "revolted by a smell",
        "a face saying yuck|nauseated by the food|wrinkling the nose in distaste|eww, gross|"
        "looks like they tasted something rotten"),
    "appalled": _w(
        "dismayed|aghast|appalled|horrified and disapproving|deeply disapproving|taken aback in dismay",
        "appalled|disapproving|offended|indignant", "a look of dismay|an appalled gasp|a disapproving open mouth",
        "an appalled face|appalled!|that is appalling|the person is aghast at it|dismay on the face|"
        "the mouth falls open in dismay|how dreadful|shocked by bad behaviour|the face shows dismay and disapproval",
        "scandalised",
        "a deeply offended expression|outraged at what they just saw|mortified by the news|how could you?!|"
        "a face of moral outrage"),
    "opening mouth": _w(
        "opening their mouth|gaping|opening mouth|opening the mouth wide|yawning|opening the mouth a little",
        "open-mouthed|wide-mouthed", "an open mouth|the mouth wide open|a gaping mouth|a wide open jaw",
        "a face with the mouth wide open|open mouth|mouth open|open wide|the mouth falls open|the jaw drops open|"
        "the lips part wide|she opens her mouth|he opens his mouth wide|Open your mouth!", "dropping the jaw wide",
        "mouth hanging open|lips parted wide|saying aah at the dentist|his mouth is wide open|"
        "a big O with the mouth"),
    "hatred": _w(
        "hateful|glaring with hatred|full of hatred|hating someone|glaring hatefully|consumed by hate|"
        "detesting someone|vengeful", "hateful|hostile|malevolent|vengeful",
        "a hateful glare|a look of hatred|narrowed, hateful eyes|deep hatred",
        "a face full of hatred|hatred|hate|the eyes narrow with hatred|she glares at her enemy|he hates them|"
        "a cold stare of hatred|a vicious glare|contempt and hatred", "seething with loathing",
        "a look of pure hate|despising everyone in the room|eyes narrowed with venomous spite|I hate you|"
        "full of bitter resentment"),
    "surprised": _w(
        "astonished|amazed|surprised|gasping in surprise|surprised by something|getting a surprise|"
        "taken by surprise|wide-eyed with surprise", "surprised|astonished|amazed|very surprised|slightly surprised",
        "a surprised look|a look of surprise|raised brows and an O-shaped mouth",
        "a surprised face|surprise!|wow|oh, really?|the eyebrows lift in surprise|the mouth makes an O|"
        "she is amazed|what a surprise|he did not expect that|oh!|the eyes widen in surprise", "caught off guard",
        "a wow expression|whoa, didn't see that coming|startled by a sudden noise|eyebrows up in pleasant surprise|"
        "an ooh face"),
    "aha": _w(
        "having an aha moment|suddenly understanding|realising something|getting an idea|having an epiphany|"
        "catching on|seeing the solution", "inspired|enlightened",
        "an aha moment|a sudden insight|a flash of insight|a eureka moment",
        "a eureka face|aha!|eureka!|aha|oh, I see!|I've got it!|the face lights up with understanding|"
        "she suddenly gets it|he has an idea|an idea pops into their head|got it!", "struck by a bright idea",
        "the moment of realisation on a face|the penny finally drops|lightbulb moment!|now I get it|"
        "figuring it out at last"),
    "annoyed": _w(
        "irritated|fed up|annoyed|losing patience|put out|slightly annoyed|grumbling|bugged",
        "annoyed|irritated|irked|impatient|miffed",
        "an irritated look|a look of annoyance|an impatient sideways glance",
        "an annoyed face|annoyed!|ugh|so annoying|the person is not amused|she is irritated by the noise|"
        "he sighs in irritation|tsk|this is irritating", "vexed by something",
        "a cranky, bothered look|exasperated with the delay|ugh, not again|peeved at a coworker|"
        "someone got on their nerves"),
    "awkward": _w(
        "embarrassed|uncomfortable|awkward|feeling awkward|smiling awkwardly|feeling embarrassed|squirming|"
        "feeling out of place", "awkward|embarrassed|uncomfortable|self-conscious",
        "an awkward smile|an embarrassed grin|an awkward glance away",
        "an awkward face|awkward...|so awkward|cringe|the person looks away awkwardly|she feels embarrassed|"
        "he smiles uncomfortably|an awkward moment|well, this is awkward|ill at ease", "feeling sheepish",
        "a cringing half smile|wanting the ground to swallow them|an uncomfortable, blushing grin|"
        "yikes, this is weird|avoiding eye contact in embarrassment"),
    "biting tongues": _w(
        "biting their tongue|sticking the tongue out|biting tongues|biting the tongue|sticking out their tongue|"
        "showing the tongue", "", "the tongue out|a tongue between the teeth|the tongue sticking out",
        "a face with the tongue out|a tongue-out face|tongue out|:P|the tongue sticks out|she bites her tongue|"
        "he sticks his tongue out|the teeth bite down on the tongue|bleh|tongue sticking out playfully|"
        "a silly face with the tongue out", "poking out the tongue",
        "tongue showing between the lips|blowing a raspberry|tongue out like a cheeky kid|nyah nyah!|"
        "the tip of the tongue pokes through"),
    "blank stare": _w(
        "staring blankly|expressionless|blank-faced|staring straight ahead|emotionless|daydreaming|"
        "looking absent-minded|in a daze", "blank|expressionless|emotionless|deadpan|glassy-eyed|dazed",
        "a blank stare|a blank look|an empty stare|no expression at all",
        "blank stare|the eyes stare without expression|she stares at nothing|he just stares|a stare with no emotion",
        "gazing vacantly",
        "an empty, vacant look|zoned out completely|staring into space|lights on but nobody home|spacing out"),
    "confused": _w(
        "puzzled|perplexed|confused|unsure|trying to understand|very confused|bemused",
        "confused|puzzled|perplexed|uncertain|bemused|muddled",
        "a confused look|a quizzical look|one brow raised in confusion",
        "a confused face|huh?|hmm?|huh, I do not follow|the person does not understand|she is confused by it|"
        "he tilts his head, puzzled|confusion|I don't get it", "baffled",
        "a head-scratching expression|not sure what is going on|huh? what does that mean|mystified by the question|"
        "lost in thought, unsure"),
    "duck lips": _w(
        "making duck lips|doing a duck face|puckering up|puckering the lips|pouting for a photo|"
        "puckering for a photo", "", "duck lips|a duck face|puckered lips|a selfie pout",
        "a duck-face selfie expression|duck face|a duck-faced person|the lips pucker up|he makes a duck face|mwah|"
        "selfie lips|lips pushed forward like a beak|pucker", "pursing the lips like a duck",
        "lips puckered for a selfie|blowing a kiss|a kissy face|smoochy lips for the camera|an Instagram-style pout"),
    "incredulous": _w(
        "disbelieving|doubtful|incredulous|raising one eyebrow in disbelief|questioning what they hear|in disbelief",
        "incredulous|doubtful|unconvinced|suspicious|unbelieving",
        "a look of disbelief|a doubtful look|one raised eyebrow",
        "an incredulous face|really?|seriously?|no way|I don't believe it|the person raises one brow in doubt|"
        "she doesn't believe a word|is that true?|you can't be serious", "unable to believe it",
        "a skeptical raised brow|yeah, right|you've got to be kidding me|not buying it|doubting every word"),
    "mocking": _w(
        "sneering|ridiculing someone|mocking|smirking|scoffing|deriding someone|being sarcastic|condescending",
        "mocking|smug|sarcastic|derisive", "a mocking smirk|a smirk|a sneer|a smug grin",
        "smirk|the mouth twists into a smirk|she sneers at him|he smirks smugly|one corner of the mouth pulls up|"
        "heh|so smug|pfft|a smug sneer", "making fun of somebody",
        "a teasing, jeering face|laughing at someone's mistake|a snide little smirk|ha, loser!|"
        "taunting the other kid"),
    "nervous": _w(
        "anxious|worried|nervous|stressed|apprehensive|a bit nervous|jumpy|shaky",
        "nervous|anxious|worried|timid|jumpy|twitchy", "a nervous smile|a worried look|anxious eyes",
        "a nervous face|nervous...|so nervous|gulp|the person glances around nervously|she is worried about it|"
        "he looks anxious|a nervous little smile|eek|a worried, shaky smile", "on edge",
        "a jittery, uneasy look|fretting about the interview|butterflies in the stomach|tense and fidgety|"
        "sweating before the big exam"),
    "oh no": _w(
        "saying oh no|dreading what just happened|realising something went wrong|panicking|groaning oh no|"
        "crying out oh no", "panicked|alarmed|distraught", "an oh-no look|a look of dread|a panicked grimace",
        "an oh-no face|oh no!|oh no|oh dear|noooo|the person realises it went wrong|she gasps oh no|he panics|"
        "disaster!|oh my god, no|oh no, not that", "thinking uh-oh",
        "a face realising a terrible mistake|what have I done?|whoops, big mistake|regretting it instantly|"
        "the sinking feeling of a blunder"),
    "serious": _w(
        "stern|solemn|serious|earnest|very serious|concentrating hard|grim|sombre",
        "serious|stern|solemn|strict|grim|sombre|austere", "a serious look|a stern look|a straight face",
        "a serious face|serious|the person keeps a straight face|she looks very serious|he is dead serious|"
        "no smiling|a serious and stern face", "grave and unsmiling",
        "a no-nonsense look|all business|not joking around|as sober as a judge|a focused, determined face"),
    "stunned": _w(
        "dumbfounded|speechless|stunned|astounded|staggered|lost for words|gobsmacked|agog",
        "stunned|dumbfounded|speechless|thunderstruck|gobsmacked",
        "a stunned look|a dumbfounded stare|a speechless gape",
        "a stunned face|whoa...|omg|the person is left speechless|she stares, stunned|he can't speak|"
        "the jaw falls in amazement|totally stunned", "flabbergasted",
        "a jaw-dropped, frozen look|in complete awe|knocked for six|struck dumb|mind blown"),
    "whatever": _w(
        "rolling their eyes|indifferent|uninterested|rolling the eyes|not caring|bored|unbothered|apathetic",
        "indifferent|unimpressed|uninterested|dismissive|apathetic|blasé",
        "an eye roll|a roll of the eyes|an indifferent look",
        "a whatever face|whatever|eye roll|the eyes roll upward|she rolls her eyes|he rolls his eyes, unimpressed|"
        "yeah, whatever|as if|don't care", "couldn't care less",
        "an eye-roll of boredom|so over it|meh, who cares|bored out of their mind|shrugging it off"),
    "wtf": _w(
        "saying what the hell|bewildered|saying wtf|outraged and bewildered|asking what happened",
        "bewildered|nonplussed|flummoxed", "a what-the-hell look|a bewildered glare|a wtf expression",
        "a wtf face|wtf|WTF?!|what the hell?|what?!|seriously, what is this|"
        "the person reacts in disbelief and outrage|she asks what the hell happened|he can't make sense of it|"
        "what the...?!|seriously, what the hell", "asking what on earth",
        "a what-is-going-on expression|what the heck is this?|are you kidding me right now|"
        "what in the world just happened|confused and outraged at once"),
    "frowning": _w(
        "glum|unhappy|frowning|sad|frowning sadly|displeased",
        "sad|unhappy|gloomy|miserable|disappointed|slightly sad",
        "a frown|a sad frown|a downturned mouth|a turned-down mouth",
        "a frowning face|frown|sad face|:(|the mouth turns down|the corners of the lips drop|she frowns|"
        "he frowns unhappily|the lips curve downward|not happy|the corners of the mouth turn down",
        "down in the mouth",
        "mouth corners turned down|a sad, droopy mouth|looking a bit miserable|an upside-down smile|"
        "sadly disappointed"),
    "raising eyebrows": _w(
        "raising their eyebrows|lifting the brows|raising eyebrows|raising the eyebrows high|raising both eyebrows|"
        "lifting the eyebrows", "", "raised eyebrows|lifted brows|both eyebrows up|high eyebrows|arched eyebrows",
        "a face with raised eyebrows|eyebrows up|raise eyebrows|the eyebrows go up|the brows lift|"
        "she raises her eyebrows|he lifts his eyebrows|brows raised|the eyebrows rise high on the forehead|"
        "eyebrows lifted high", "arching both brows high",
        "brows shooting up|eyebrows hiked up to the hairline|lifting her brows with interest|brows way up|"
        "forehead wrinkled by raised brows"),
    "turning head left": _w(
        "turning their head to the left|facing left|turning head left|turning to the left|turning the face left|"
        "rotating their head to the left", "",
        "the head turned left|the face turned to the left|a left head turn|the head rotated left",
        "a head turned to the left|turn head left|head left|the head turns to the left|she turns her head left|"
        "a left-facing head|the face rotates to the left|head turned left|turning left|head to the left|"
        "face to the left", "rotating the head leftwards",
        "face pointed to the left side|head swivelled towards the left|she turns her face to the left|"
        "a head turn to the left|head angled left"),
    "turning head right": _w(
        "turning their head to the right|facing right|turning head right|turning to the right|"
        "turning the face right|rotating their head to the right", "",
        "the head turned right|the face turned to the right|a right head turn|the head rotated right",
        "a head turned to the right|turn head right|head right|the head turns to the right|she turns her head right|"
        "a right-facing head|the face rotates to the right|head turned right|turning right|head to the right|"
        "face to the right", "rotating the head rightwards",
        "face pointed to the right side|head swivelled towards the right|she turns her face to the right|"
        "a head turn to the right|head angled right"),
    "tilting head": _w(
        "tilting their head|leaning the head sideways|tilting head|tilting the head to the side|tipping the head|"
        "bending the head sideways|slanting the head", "",
        "a tilted head|a head tilt|the head tilted sideways|a slanted head",
        "head tilt|tilt the head|the head tilts to one side|she tilts her head|he tilts his head sideways|"
        "the head leans over|a tilted face|head tilted to the side", "cocking the head to one side",
        "head inclined at an angle|head leaning over onto one shoulder|her head is tipped sideways|"
        "tilts the head like a curious puppy|a lopsided head angle"),
    "looking up": _w(
        "looking upwards|gazing up|looking up|glancing up|looking at the sky|staring upward|looking above|"
        "raising the eyes", "", "an upward gaze|eyes looking up|the gaze directed up",
        "eyes raised upward|look up|eyes up|the eyes look up|she looks up|he gazes upward|the pupils move up|"
        "looking up at something above|the gaze rises|the eyes turn upward", "eyeing the ceiling",
        "pupils turned to the sky|staring up at the stars|eyes lifted heavenward|glancing upward for a second|"
        "peering at something overhead"),
    "looking down": _w(
        "looking downwards|gazing at the floor|looking down|glancing down|staring down|looking down at the floor|"
        "looking at the desk", "", "a downward gaze|downcast eyes|lowered eyes|the gaze directed down",
        "eyes lowered|look down|eyes down|the eyes look down|she looks down|he gazes downward|the pupils move down|"
        "looking down at something below|the eyes turn downward", "eyes cast to the ground",
        "pupils aimed at the feet|reading a book on the lap|eyes lowered shyly to the table|glancing downward|"
        "peering down at the phone"),
    "looking left": _w(
        "looking to the left|glancing left|looking left|gazing to the left|glancing to the left|staring to the left|"
        "looking leftward", "", "a glance to the left|a leftward gaze|eyes to the left",
        "eyes turned to the left|look left|eyes left|the eyes move to the left|she looks to the left|"
        "he glances left|the pupils shift left|a look to the left|eyes glance to the left|the gaze moves left",
        "peeking leftwards",
        "a sideways glance to the left|eyes darting to the left|side-eye toward the left|"
        "watching something on the left|the gaze slides left"),
    "looking right": _w(
        "looking to the right|glancing right|looking right|gazing to the right|glancing to the right|"
        "staring to the right|looking rightward", "", "a glance to the right|a rightward gaze|eyes to the right",
        "eyes turned to the right|look right|eyes right|the eyes move to the right|she looks to the right|"
        "he glances right|the pupils shift right|a look to the right|eyes glance to the right|the gaze moves right",
        "peeking rightwards",
        "a sideways glance to the right|eyes darting to the right|side-eye toward the right|"
        "watching something on the right|the gaze slides right"),
    "blushing": _w(
        "red in the face|flushed|blushing|blushing shyly|going red|turning red|blushing deeply|blushing bright red",
        "shy|flushed|rosy-cheeked|red-cheeked", "red cheeks|rosy cheeks|a blush|flushed cheeks",
        "a blushing face|blush|the cheeks turn red|the cheeks flush pink|she blushes|he blushes shyly|"
        "a shy smile with red cheeks|cheeks glowing red", "turning rosy with shyness",
        "pink cheeks of embarrassment|cheeks going crimson|flustered by a compliment|red as a tomato|"
        "a bashful glow on the cheeks"),
}

