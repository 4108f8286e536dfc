"""Synthesise a labelled folder of female and male voices with espeak-ng (the search case study).

    python examples/make_voices.py OUT_DIR [--per_gender 8] [--held_out 2]
    python examples/make_voices.py OUT_DIR --per_voice 3      # 3 sentences per voice, speaker groups

Writes OUT_DIR/voices/female/<voice>.wav and OUT_DIR/voices/male/<voice>.wav, one distinct
sentence per voice (no two files share a speaker variant or a sentence, so a match is a voice
match, not a repeated recording), and OUT_DIR/voices.csv (path,label; paths relative to
OUT_DIR/voices). With --held_out N, N more voices per gender go to OUT_DIR/queries/ (labels in
OUT_DIR/queries.csv) for held-out evaluation.

espeak-ng comes from Debian (`apt-get install espeak-ng`); nothing is downloaded. Its voice
variants (`en-us+f1`, `en-us+m3`, ...) set pitch and formants per speaker; the gender is the one
the variant file declares.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

# Variants whose espeak-ng file says "gender female" / "gender male", fixed before measuring:
# robotic, whispering and croaking ones are out, and so are those with a `tone` line, an
# equaliser over the whole output (a channel effect, not a voice: "steph" has female pitch,
# 166-200 Hz, but a tone curve boosting 100-600 Hz and cutting 1.2 kHz, and its mean log-mel
# spectrum sits among the male voices). The first N of each list are used.
FEMALE = ["f1", "f2", "f3", "f4", "f5", "Annie", "linda", "Alicia", "Andrea", "aunty", "belinda", "grandma"]
MALE = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "Andy", "Denis", "Lee"]
# The guide's case study: a female voice saying "Life is beautiful" finds the other female voices.
GUIDE_SENTENCE = "Life is beautiful."

SENTENCES = [
    "Life is beautiful, and every morning brings something new.",
    "The quick brown fox jumps over the lazy dog near the river.",
    "Please remember to close the window before you leave the house.",
    "We walked along the beach until the sun went down behind the hills.",
    "A cup of tea on a rainy afternoon is all I need today.",
    "The library opens at nine and closes late on Thursdays.",
    "Music fills the room whenever my grandmother plays the piano.",
    "Our train was delayed, so we waited on the platform for an hour.",
    "She painted the fence bright blue to match the garden door.",
    "Every child in the village knows the old story of the lighthouse.",
    "The market sells fresh bread, cheese and apples every Saturday.",
    "He forgot his umbrella and came home soaking wet.",
    "Bright stars appeared one by one above the quiet valley.",
    "The museum keeps a collection of clocks from many centuries.",
    "Turn left at the bakery and you will find the station.",
    "Snow covered the mountains long before winter had begun.",
    "They built a small boat and sailed across the lake in June.",
    "The teacher read a poem about the sea to the whole class.",
    "Fresh coffee and warm bread make the kitchen smell wonderful.",
    "We planted tomatoes, beans and sunflowers in the spring.",
    "Nobody expected the concert to end with such a loud finale.",
    "Birds were singing in the tall trees behind the school.",
    "The old bridge was repaired after the flood last autumn.",
    "Could you tell me the way to the nearest post office?",
]


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if not exe:
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    return exe


def synthesise(
    out_dir: str | Path,
    per_gender: int = 8,
    held_out: int = 0,
    same_sentence: str | None = None,
) -> dict[str, str]:
    """Write the voices; returns {relative path: label} of the collection (not the held-out queries).

    same_sentence: every voice says it (the guide's protocol); default: one distinct sentence per voice.
    """
    out = Path(out_dir)
    n = per_gender + held_out
    if n > min(len(FEMALE), len(MALE)):
        raise ValueError(f"at most {min(len(FEMALE), len(MALE))} voices per gender")
    exe = espeak()
    labels: dict[str, str] = {}
    queries: dict[str, str] = {}
    for gender, variants in (("female", FEMALE), ("male", MALE)):
        for i, variant in enumerate(variants[:n]):
            held = i >= per_gender
            rel = f"{gender}/{variant}.wav"
            path = out / ("queries" if held else "voices") / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            text = same_sentence or SENTENCES[(i * 2 + (gender == "male")) % len(SENTENCES)]
            subprocess.run(
                [exe, "-v", f"en-us+{variant}", "-s", "160", "-w", str(path), text],
                check=True,
                capture_output=True,
            )
            (queries if held else labels)[rel] = gender
    (out / "voices.csv").write_text("path,label\n" + "".join(f"{p},{g}\n" for p, g in labels.items()))
    if queries:
        (out / "queries.csv").write_text("path,label\n" + "".join(f"{p},{g}\n" for p, g in queries.items()))
    return labels


def synthesise_speakers(
    out_dir: str | Path, per_gender: int = 8, per_voice: int = 3
) -> list[tuple[str, str, str]]:
    """Several sentences per voice, for evaluation grouped by speaker (`embedkit evaluate`).

    Writes OUT_DIR/speakers/<gender>/<voice>_<i>.wav (sentence i differs within a voice and
    between voices) and OUT_DIR/speakers.csv (path,label,group: gender, and the voice as group,
    so cross-validation never puts one speaker on both sides). Returns the (path, label, group) rows.
    """
    out = Path(out_dir)
    if per_gender > min(len(FEMALE), len(MALE)):
        raise ValueError(f"at most {min(len(FEMALE), len(MALE))} voices per gender")
    exe = espeak()
    rows = []
    for gender, variants in (("female", FEMALE), ("male", MALE)):
        for i, variant in enumerate(variants[:per_gender]):
            for j in range(per_voice):
                rel = f"{gender}/{variant}_{j}.wav"
                path = out / "speakers" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                text = SENTENCES[(i * per_voice + j + (gender == "male") * 7) % len(SENTENCES)]
                subprocess.run(
                    [exe, "-v", f"en-us+{variant}", "-s", "160", "-w", str(path), text],
                    check=True,
                    capture_output=True,
                )
                rows.append((rel, gender, variant))
    (out / "speakers.csv").write_text("path,label,group\n" + "".join(f"{p},{g},{v}\n" for p, g, v in rows))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--per_gender", type=int, default=8)
    p.add_argument("--held_out", type=int, default=0)
    p.add_argument(
        "--sentence",
        help=f"every voice says this (e.g. the guide's {GUIDE_SENTENCE!r}); "
        "default: a distinct sentence per voice",
    )
    p.add_argument(
        "--per_voice",
        type=int,
        default=0,
        help="instead: N sentences per voice in OUT_DIR/speakers/ with speakers.csv (path,label,group)",
    )
    args = p.parse_args()
    if args.per_voice:
        rows = synthesise_speakers(args.out_dir, args.per_gender, args.per_voice)
        print(f"wrote {len(rows)} files to {args.out_dir}/speakers (labels and speaker groups: speakers.csv)")
        return
    labels = synthesise(args.out_dir, args.per_gender, args.held_out, args.sentence)
    print(f"wrote {len(labels)} voices to {args.out_dir}/voices (labels: voices.csv)")


if __name__ == "__main__":
    main()
