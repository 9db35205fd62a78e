"""The 25 LLP event classes, in the index order of the data and the official metric, with VALOR's Table 6.

Table 6 (VALOR appendix): CLIP captions ("A photo of ..."), CLAP captions ("This is a sound of ..."), and the
class-dependent thresholds theta^CLIP, theta^CLAP compared with a strict `>` against the teachers' logits.
"""
from __future__ import annotations

import numpy as np

# (name, CLIP caption, CLAP caption, theta_CLIP, theta_CLAP) -- Table 6, row order = class index.
TABLE6: tuple[tuple[str, str, str, float, float], ...] = (
    ("Speech", "A photo of people talking.", "This is a sound of speech", 20, 0),
    ("Car", "A photo of a car.", "This is a sound of car", 15, 0),
    ("Cheering", "A photo of people cheering.", "This is a sound of cheering", 18, 1),
    ("Dog", "A photo of a dog.", "This is a sound of dog", 14, 4),
    ("Cat", "A photo of a cat.", "This is a sound of cat", 15, 6),
    ("Frying_(food)", "A photo of frying food.", "This is a sound of frying (food)", 18, -2),
    ("Basketball_bounce", "A photo of people playing basketball.", "This is a sound of basketball bounce", 18, 4),
    ("Fire_alarm", "A photo of a fire alarm.", "This is a sound of fire alarm", 15, 4),
    ("Chainsaw", "A photo of a chainsaw.", "This is a sound of chainsaw", 15, 2),
    ("Cello", "A photo of a cello.", "This is a sound of cello", 15, 2),
    ("Banjo", "A photo of a banjo.", "This is a sound of banjo", 15, 2),
    ("Singing", "A photo of people singing.", "This is a sound of singing", 18, 1),
    ("Chicken_rooster", "A photo of a chicken or a rooster.", "This is a sound of chicken, rooster", 15, 2),
    ("Violin_fiddle", "A photo of a violin.", "This is a sound of violin fiddle", 15, 3),
    ("Vacuum_cleaner", "A photo of a vacuum cleaner.", "This is a sound of vacuum cleaner", 15, 0),
    ("Baby_laughter", "A photo of a laughing baby.", "This is a sound of baby laughter", 15, 2),
    ("Accordion", "A photo of an accordion.", "This is a sound of accordion", 15, 2),
    ("Lawn_mower", "A photo of a lawnmower.", "This is a sound of lawn mower", 15, 2),
    ("Motorcycle", "A photo of a motorcycle.", "This is a sound of motorcycle", 15, 0),
    ("Helicopter", "A photo of a helicopter.", "This is a sound of helicopter", 16, 2),
    ("Acoustic_guitar", "A photo of a acoustic guitar.", "This is a sound of acoustic guitar", 14, -1),
    ("Telephone_bell_ringing", "A photo of a ringing telephone.", "This is a sound of telephone bell ringing", 15, 2),
    ("Baby_cry_infant_cry", "A photo of a crying baby.", "This is a sound of baby cry, infant cry", 15, 3),
    ("Blender", "A photo of a blender.", "This is a sound of blender", 15, 3),
    ("Clapping", "A photo of hands clapping.", "This is a sound of clapping", 18, 0),
)

CLASSES: tuple[str, ...] = tuple(row[0] for row in TABLE6)
NUM_CLASSES = len(CLASSES)  # 25
NUM_SEGMENTS = 10  # ten 1-s segments per LLP video
CLIP_CAPTIONS: tuple[str, ...] = tuple(row[1] for row in TABLE6)
CLAP_CAPTIONS: tuple[str, ...] = tuple(row[2] for row in TABLE6)
CLIP_THRESHOLDS = np.array([row[3] for row in TABLE6], dtype=np.float32)  # theta^CLIP, visual
CLAP_THRESHOLDS = np.array([row[4] for row in TABLE6], dtype=np.float32)  # theta^CLAP, audio
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}


def class_index(name: str) -> int:
    """Index of an LLP class name; KeyError names the unknown class."""
    try:
        return CLASS_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown LLP class {name!r}; expected one of {', '.join(CLASSES)}") from None
